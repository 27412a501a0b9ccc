//! The one way minder starts a process: its own fork/exec.
//!
//! Everything that can allocate or fail in a complex way (argv, envp, PATH
//! lookup, user and group lookups) is prepared before `fork`. Between `fork`
//! and `execve` the child only makes async-signal-safe system calls, and
//! reports a failure as (stage, errno) over a close-on-exec pipe, so the
//! parent can tell "exec failed: No such file or directory" from a program
//! that started and exited.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::unistd::{ForkResult, Gid, Group, Pid, Uid, User};
use tokio::sync::oneshot;

use super::{ExitReceiver, Reaper};

/// Variables a child must never inherit from minder's own environment: they
/// describe minder's relation to *its* manager (systemd), not the child's.
const NOT_INHERITED: &[&str] = &[
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    crate::reexec::STATE_FD_ENV,
];

/// The RLIMIT_NOFILE minder itself was started with, restored in children:
/// minder raises its own limit for its many fds, but programs (select(2) users
/// above all) expect the usual soft limit.
static CHILD_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Records the fd limit children get; call before raising minder's own.
pub fn set_child_fd_limit(soft: u64, hard: u64) {
    let _ = CHILD_NOFILE.set(libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    });
}

/// Used when neither the child's nor minder's environment has `PATH`.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to start and how.
#[derive(Debug, Clone)]
pub struct SpawnRequest {
    /// argv; `argv[0]` is looked up in `PATH` unless it contains a `/`.
    pub argv: Vec<String>,
    /// Working directory of the child.
    pub directory: PathBuf,
    /// Start from an empty environment instead of minder's own.
    pub clear_env: bool,
    /// Variables added on top (later entries win).
    pub environment: Vec<(String, String)>,
    /// User to run as (name or numeric id); needs root unless it is minder's own.
    pub user: Option<String>,
    /// Group to run as (name or numeric id); defaults to the user's primary group.
    pub group: Option<String>,
    /// The child's stdin: this fd of minder's (kept open by the caller until
    /// `spawn` returns), or /dev/null.
    pub stdin: Option<RawFd>,
    /// Where the child's stdout goes.
    pub stdout: Output,
    /// Where the child's stderr goes.
    pub stderr: Output,
    /// Variables whose value is the child's own PID (`WATCHDOG_PID`,
    /// `LISTEN_PID`), only known after fork.
    pub pid_variables: Vec<&'static str>,
    /// Sockets the child gets as fds 3, 4, ... (the caller keeps them open).
    pub listen_fds: Vec<RawFd>,
}

/// Where a child's stdout or stderr goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// minder's own stderr (as a terminal or journald sees it).
    MinderStderr,
    /// Discarded.
    Null,
    /// This fd of minder's (e.g. a pipe's write end); the caller keeps it open
    /// until `spawn` returns.
    Fd(RawFd),
}

/// Where a spawn failed; part of the message a user sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnStage {
    /// Building argv/envp (a NUL byte in an argument).
    Prepare,
    /// Finding the executable in `PATH`.
    Lookup,
    /// Resolving `user`/`group`, or refusing them without root.
    Credentials,
    /// `fork` itself.
    Fork,
    /// `setsid` in the child.
    Session,
    /// Setting up fds 0, 1, 2 in the child.
    Stdio,
    /// `setgroups`/`setgid`/`setuid` in the child.
    Identity,
    /// `chdir` to `directory`.
    Chdir,
    /// `execve`.
    Exec,
}

impl SpawnStage {
    fn from_code(code: u32) -> SpawnStage {
        match code {
            4 => SpawnStage::Session,
            5 => SpawnStage::Stdio,
            6 => SpawnStage::Identity,
            7 => SpawnStage::Chdir,
            _ => SpawnStage::Exec,
        }
    }
}

/// A failed spawn: where, the OS error, and a message naming what was involved.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SpawnError {
    /// The stage that failed.
    pub stage: SpawnStage,
    /// The OS error, when there was one.
    pub errno: Option<Errno>,
    /// Human-readable, e.g. `exec "/usr/bin/web": No such file or directory`.
    pub message: String,
}

impl SpawnError {
    fn os(stage: SpawnStage, errno: Errno, what: impl std::fmt::Display) -> SpawnError {
        SpawnError {
            stage,
            errno: Some(errno),
            message: format!("{what}: {}", errno.desc()),
        }
    }

    fn plain(stage: SpawnStage, message: String) -> SpawnError {
        SpawnError {
            stage,
            errno: None,
            message,
        }
    }
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its PID, which is also its process group and session id.
    pub pid: Pid,
    /// Resolves once the reaper has collected it.
    pub exit: ExitReceiver,
}

/// Credentials resolved before fork.
struct Identity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Everything the child needs, as raw C data, so nothing allocates after fork.
struct Prepared {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    directory: CString,
    identity: Option<Identity>,
    /// `NAME=` followed by room for the PID digits and a NUL, filled in the child.
    pid_slots: Vec<Vec<u8>>,
}

/// Room for the decimal digits of any PID (at most 2^22 on Linux) and a NUL.
const PID_DIGITS: usize = 12;

/// Starts a process in a new session, registered with `reaper` before it can
/// exit, and waits until it has exec'd (or reported why it could not).
pub fn spawn(req: &SpawnRequest, reaper: &Reaper) -> Result<Spawned, SpawnError> {
    let (spawned, report) = spawn_unconfirmed(req, reaper)?;
    // Blocking: the read ends at exec (close-on-exec) or with the report.
    let _ = nix::fcntl::fcntl(&report.fd, nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()));
    let program = req.argv.first().map(String::as_str).unwrap_or_default();
    match report.failure(program, &req.directory) {
        None => Ok(spawned),
        Some(e) => Err(e),
    }
}

/// Why a spawned child may still fail: its exec has not been confirmed.
///
/// Waiting for each exec one after the other costs a supervisor starting a
/// thousand programs most of a second; instead the caller keeps this and
/// asks [`PendingReport::failure`] once the child has exited. The child
/// reports (stage, errno) before it `_exit`s, so by then the answer is there.
#[derive(Debug)]
pub struct PendingReport {
    fd: OwnedFd,
}

impl PendingReport {
    /// The child's report of a failed exec (or earlier stage), if it made
    /// one; `program` and `directory` name what failed.
    pub fn failure(&self, program: &str, directory: &Path) -> Option<SpawnError> {
        let (stage, errno) = read_report(&self.fd)?;
        let what = match stage {
            SpawnStage::Exec => format!("exec {program:?}"),
            SpawnStage::Chdir => format!("chdir {directory:?}"),
            SpawnStage::Identity => "setting user/group".to_string(),
            SpawnStage::Session => "setsid".to_string(),
            _ => "setting up stdio".to_string(),
        };
        Some(SpawnError::os(stage, errno, what))
    }
}

/// Like [`spawn`], without waiting for the exec: failures after fork come
/// from the returned report once the child has exited.
pub fn spawn_unconfirmed(
    req: &SpawnRequest,
    reaper: &Reaper,
) -> Result<(Spawned, PendingReport), SpawnError> {
    let mut prepared = prepare(req)?;
    let argv_ptrs = null_terminated(&prepared.argv);
    let slots: Vec<(*mut u8, usize)> = prepared
        .pid_slots
        .iter_mut()
        .map(|slot| {
            let prefix = slot.len() - PID_DIGITS;
            (slot.as_mut_ptr(), prefix)
        })
        .collect();
    let mut envp_ptrs: Vec<*const libc::c_char> =
        prepared.envp.iter().map(|s| s.as_ptr()).collect();
    envp_ptrs.extend(
        slots
            .iter()
            .map(|(ptr, _)| ptr.cast_const().cast::<libc::c_char>()),
    );
    envp_ptrs.push(std::ptr::null());
    let group_list: Vec<libc::gid_t> = prepared
        .identity
        .as_ref()
        .map(|id| id.groups.iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default();

    let (err_read, err_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| SpawnError::os(SpawnStage::Fork, e, "pipe"))?;
    // Only the read end: a report is read when the child is known to be gone.
    nix::fcntl::fcntl(&err_read, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
        .map_err(|e| SpawnError::os(SpawnStage::Fork, e, "pipe"))?;
    let devnull = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| SpawnError::os(SpawnStage::Stdio, e, "open /dev/null"))?;

    // Copied before fork: the child rewrites it in place while moving fds.
    let mut listen_scratch: Vec<libc::c_int> = req.listen_fds.clone();
    let (exit_tx, exit_rx) = oneshot::channel();
    let mut owners = reaper.lock();
    // SAFETY: the child branch below only calls async-signal-safe functions on
    // data prepared before the fork, and ends in execve or _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => unsafe {
            child(ChildArgs {
                path: &prepared.path,
                argv: &argv_ptrs,
                envp: &envp_ptrs,
                directory: &prepared.directory,
                identity: prepared.identity.as_ref(),
                groups: &group_list,
                stdin: req.stdin.unwrap_or(devnull.as_raw_fd()),
                stdout: output_fd(req.stdout, devnull.as_raw_fd()),
                stderr: output_fd(req.stderr, devnull.as_raw_fd()),
                report: err_write.as_raw_fd(),
                nofile: CHILD_NOFILE.get(),
                pid_slots: &slots,
                listen: &mut listen_scratch,
            })
        },
        Ok(ForkResult::Parent { child }) => {
            owners.insert(child.as_raw(), exit_tx);
            drop(owners);
            drop(err_write);
            drop(devnull);
            Ok((
                Spawned {
                    pid: child,
                    exit: exit_rx,
                },
                PendingReport { fd: err_read },
            ))
        }
        Err(e) => Err(SpawnError::os(SpawnStage::Fork, e, "fork")),
    }
}

fn output_fd(output: Output, devnull: RawFd) -> RawFd {
    match output {
        Output::MinderStderr => 2,
        Output::Null => devnull,
        Output::Fd(fd) => fd,
    }
}

/// Reads the child's (stage, errno) report; `None` means the pipe closed on
/// exec (success) or, non-blocking, that nothing is there.
fn read_report(fd: &OwnedFd) -> Option<(SpawnStage, Errno)> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    if got < buf.len() {
        return None;
    }
    let stage = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Some((SpawnStage::from_code(stage), Errno::from_raw(errno)))
}

fn prepare(req: &SpawnRequest) -> Result<Prepared, SpawnError> {
    let identity = resolve_identity(req.user.as_deref(), req.group.as_deref())?;
    let env = environment(req, identity.as_ref());
    let path_var = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    let program = req
        .argv
        .first()
        .ok_or_else(|| SpawnError::plain(SpawnStage::Prepare, "empty command".to_string()))?;
    let path = if program.contains('/') {
        PathBuf::from(program)
    } else {
        find_in_path(program, &path_var).ok_or_else(|| SpawnError {
            stage: SpawnStage::Lookup,
            errno: Some(Errno::ENOENT),
            message: format!(
                "exec {program:?}: No such file or directory (searched PATH={path_var})"
            ),
        })?
    };
    let cstring = |s: &OsStr| {
        CString::new(s.as_bytes()).map_err(|_| {
            SpawnError::plain(SpawnStage::Prepare, format!("{s:?} contains a NUL byte"))
        })
    };
    Ok(Prepared {
        path: cstring(path.as_os_str())?,
        argv: req
            .argv
            .iter()
            .map(|a| cstring(OsStr::new(a)))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .filter(|(k, _)| !req.pid_variables.contains(&k.as_str()))
            .map(|(k, v)| cstring(OsStr::new(&format!("{k}={v}"))))
            .collect::<Result<_, _>>()?,
        directory: cstring(req.directory.as_os_str())?,
        identity,
        pid_slots: req
            .pid_variables
            .iter()
            .map(|name| {
                let mut slot = format!("{name}=").into_bytes();
                slot.extend([b'0'; PID_DIGITS]);
                slot
            })
            .collect(),
    })
}

/// The child's environment: minder's own (less what belongs to minder's manager)
/// or none, then HOME/USER/LOGNAME for a `user`, then the program's variables.
fn environment(req: &SpawnRequest, identity: Option<&Identity>) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = if req.clear_env {
        Vec::new()
    } else {
        std::env::vars()
            .filter(|(k, _)| !NOT_INHERITED.contains(&k.as_str()))
            .collect()
    };
    let mut set = |key: &str, value: String| {
        env.retain(|(k, _)| k != key);
        env.push((key.to_string(), value));
    };
    if let Some(id) = identity {
        if let Ok(Some(user)) = User::from_uid(id.uid) {
            set("HOME", user.dir.to_string_lossy().into_owned());
            set("USER", user.name.clone());
            set("LOGNAME", user.name);
        }
    }
    for (k, v) in &req.environment {
        set(k, v.clone());
    }
    env
}

fn find_in_path(program: &str, path_var: &str) -> Option<PathBuf> {
    path_var
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| {
            nix::unistd::access(candidate.as_path(), nix::unistd::AccessFlags::X_OK).is_ok()
                && candidate.is_file()
        })
}

/// Resolves `user`/`group` into ids. Without root, only minder's own identity is accepted.
fn resolve_identity(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<Option<Identity>, SpawnError> {
    if user.is_none() && group.is_none() {
        return Ok(None);
    }
    let cred_err = |msg: String| SpawnError::plain(SpawnStage::Credentials, msg);
    let user = match user {
        None => None,
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(id) => User::from_uid(Uid::from_raw(id)),
                Err(_) => User::from_name(name),
            };
            Some(
                found
                    .map_err(|e| cred_err(format!("looking up user {name:?}: {}", e.desc())))?
                    .ok_or_else(|| cred_err(format!("no such user {name:?}")))?,
            )
        }
    };
    let gid = match group {
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(id) => Group::from_gid(Gid::from_raw(id)),
                Err(_) => Group::from_name(name),
            };
            found
                .map_err(|e| cred_err(format!("looking up group {name:?}: {}", e.desc())))?
                .ok_or_else(|| cred_err(format!("no such group {name:?}")))?
                .gid
        }
        None => match &user {
            Some(u) => u.gid,
            None => Gid::effective(),
        },
    };
    let uid = user.as_ref().map(|u| u.uid).unwrap_or_else(Uid::effective);
    if !Uid::effective().is_root() {
        if uid != Uid::effective() || gid != Gid::effective() {
            return Err(cred_err(format!(
                "user/group need minder to run as root (it runs as uid {})",
                Uid::effective()
            )));
        }
        // Already that identity: nothing to change, and no privilege to change it.
        return Ok(None);
    }
    let groups = match &user {
        Some(u) => {
            let name = CString::new(u.name.as_bytes())
                .map_err(|_| cred_err(format!("user name {:?} contains a NUL byte", u.name)))?;
            nix::unistd::getgrouplist(&name, gid).map_err(|e| {
                cred_err(format!("listing groups of user {:?}: {}", u.name, e.desc()))
            })?
        }
        None => vec![gid],
    };
    Ok(Some(Identity { uid, gid, groups }))
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

struct ChildArgs<'a> {
    path: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    directory: &'a CString,
    identity: Option<&'a Identity>,
    groups: &'a [libc::gid_t],
    stdin: libc::c_int,
    stdout: libc::c_int,
    stderr: libc::c_int,
    report: libc::c_int,
    nofile: Option<&'a libc::rlimit>,
    pid_slots: &'a [(*mut u8, usize)],
    listen: &'a mut [libc::c_int],
}

/// Runs in the forked child: async-signal-safe calls only, then exec.
///
/// # Safety
/// Must only be called in the child right after fork, with pointers that stay
/// valid (they point into the parent's copy-on-write memory).
unsafe fn child(args: ChildArgs<'_>) -> ! {
    // Signal handlers of minder are reset by exec, but ignored signals (Rust
    // ignores SIGPIPE) and the blocked mask would be inherited.
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    for sig in 1..libc::SIGRTMIN() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    if libc::setsid() < 0 {
        fail(args.report, 4);
    }
    let pid = libc::getpid();
    for &(slot, prefix) in args.pid_slots {
        write_decimal(slot.add(prefix), pid);
    }
    // Targets: 0, 1, 2 for stdio, then 3.. for the listen sockets. First move
    // every source above the last target (close-on-exec copies), so placing
    // one cannot clobber another that is still to be placed.
    let first_free = 3 + args.listen.len() as libc::c_int;
    let mut stdio = [args.stdin, args.stdout, args.stderr];
    for fd in stdio.iter_mut().chain(args.listen.iter_mut()) {
        *fd = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, first_free);
        if *fd < 0 {
            fail(args.report, 5);
        }
    }
    // dup2 clears close-on-exec on the target.
    for (target, source) in stdio
        .into_iter()
        .chain(args.listen.iter().copied())
        .enumerate()
    {
        if libc::dup2(source, target as libc::c_int) < 0 {
            fail(args.report, 5);
        }
    }
    // Nothing else survives exec, whatever minder itself inherited.
    libc::syscall(
        libc::SYS_close_range,
        first_free as u32,
        u32::MAX,
        libc::CLOSE_RANGE_CLOEXEC,
    );
    if let Some(limit) = args.nofile {
        // Lowering can only fail for an invalid value; the child then keeps minder's.
        libc::setrlimit(libc::RLIMIT_NOFILE, limit);
    }
    if let Some(id) = args.identity {
        if libc::setgroups(args.groups.len(), args.groups.as_ptr()) < 0
            || libc::setgid(id.gid.as_raw()) < 0
            || libc::setuid(id.uid.as_raw()) < 0
        {
            fail(args.report, 6);
        }
    }
    if libc::chdir(args.directory.as_ptr()) < 0 {
        fail(args.report, 7);
    }
    libc::execve(args.path.as_ptr(), args.argv.as_ptr(), args.envp.as_ptr());
    fail(args.report, 8)
}

/// Writes `n` in decimal followed by a NUL at `at` (room: [`PID_DIGITS`] bytes);
/// no allocation, so it may run between fork and exec.
unsafe fn write_decimal(at: *mut u8, n: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    let mut rest = n.unsigned_abs();
    loop {
        digits[len] = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 || len == PID_DIGITS - 1 {
            break;
        }
    }
    for i in 0..len {
        *at.add(i) = digits[len - 1 - i];
    }
    *at.add(len) = 0;
}

/// Reports (stage, errno) to the parent and exits without running any destructor.
unsafe fn fail(report: libc::c_int, stage: u32) -> ! {
    let errno = *libc::__errno_location();
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&stage.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    libc::write(report, buf.as_ptr().cast(), buf.len());
    libc::_exit(127)
}
