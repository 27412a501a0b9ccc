//! The one way minder starts a process: its own clone/exec.
//!
//! Everything that can allocate or fail in a complex way (argv, envp, PATH
//! lookup, user and group lookups) is prepared before the child exists. The
//! child is made with `clone(CLONE_VM)`: it runs in minder's memory, on a
//! stack of its own, until `execve` replaces it. No page tables are copied
//! (fork's main cost with a thousand children and their pipes) and minder
//! takes no copy-on-write faults afterwards; unlike `vfork`, minder does not
//! wait for the exec, so starting many programs does not queue minder behind
//! each child's turn on a CPU. The kernel tells when the child is done with
//! minder's memory (`CLONE_CHILD_CLEARTID`); until then what it reads is kept.
//! Between clone and exec the child only makes raw system calls, and reports
//! a failed step as (stage, errno) in memory minder reads once the child has
//! exited, so minder can tell "exec failed: No such file or directory" from a
//! program that started and exited.

use std::ffi::{CString, OsStr};
use std::num::NonZeroU64;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};
use nix::unistd::{Gid, Pid, Uid, User};
use tokio::sync::oneshot;

use super::reaper::Watched;
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
    HANDOVER_STATE_FD_ENV,
    HANDOVER_NOFILE_ENV,
];

/// The number of the memfd holding the state `reexec` hands from one image
/// of minder to the next. Named here, with the other variables no child
/// inherits, so that keeping minder's own variables from children needs
/// nothing from `reexec` (which takes the name from here): whatever
/// `reexec` leaves in the environment, no child sees it.
pub const HANDOVER_STATE_FD_ENV: &str = "MINDER_REEXEC_FD";

/// The soft RLIMIT_NOFILE the first image of minder was started with,
/// handed to the next one by `reexec`; kept from children like
/// [`HANDOVER_STATE_FD_ENV`].
pub const HANDOVER_NOFILE_ENV: &str = "MINDER_ORIGINAL_NOFILE";

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

/// The soft fd limit children get, if it differs from minder's own.
pub fn child_fd_limit() -> Option<u64> {
    // `rlim_t` is 32 bits wide on some targets.
    #[allow(clippy::unnecessary_cast)]
    CHILD_NOFILE.get().map(|l| l.rlim_cur as u64)
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
    /// `LISTEN_PID`), only known in the child.
    pub pid_variables: Vec<&'static str>,
    /// Sockets the child gets as fds 3, 4, ... (the caller keeps them open).
    pub listen_fds: Vec<RawFd>,
    /// The directory of the cgroup the child starts in (the caller keeps
    /// it open until `spawn` returns); `None`: minder's own.
    pub cgroup: Option<RawFd>,
    /// Resource limits set in the child, soft = hard: (`RLIMIT_*`, value),
    /// `u64::MAX` for unlimited.
    pub limits: Vec<(i32, u64)>,
}

impl SpawnRequest {
    /// `argv` as a plain command: in `/`, with minder's environment and
    /// identity, stdin, stdout and stderr on /dev/null, no sockets. Callers
    /// change the fields they need.
    pub fn command(argv: Vec<String>) -> SpawnRequest {
        SpawnRequest {
            argv,
            directory: PathBuf::from("/"),
            clear_env: false,
            environment: Vec::new(),
            user: None,
            group: None,
            stdin: None,
            stdout: Output::Null,
            stderr: Output::Null,
            pid_variables: Vec::new(),
            listen_fds: Vec::new(),
            cgroup: None,
            limits: Vec::new(),
        }
    }
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

/// Defines [`SpawnStage`] and the list of all its values from one list, so
/// that the code a child writes for its failed stage and the stage minder
/// reads back from it cannot disagree.
macro_rules! spawn_stages {
    ($($(#[doc = $doc:literal])* $stage:ident = $code:literal,)*) => {
        /// Where a spawn failed; part of the message a user sees.
        ///
        /// The child reports its failed stage as the number of the variant
        /// (`stage as u32`, never 0: 0 means no failure), minder reads it
        /// back with `SpawnStage::from_code`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub enum SpawnStage {
            $($(#[doc = $doc])* $stage = $code,)*
        }

        impl SpawnStage {
            /// Every stage.
            const ALL: &[SpawnStage] = &[$(SpawnStage::$stage,)*];
        }
    };
}

spawn_stages! {
    /// Preparing what the child is given: argv/envp (a NUL byte in an
    /// argument), its log pipes, its `listen` sockets.
    Prepare = 1,
    /// Finding the executable in `PATH`.
    Lookup = 2,
    /// Resolving `user`/`group`, or refusing them without root.
    Credentials = 3,
    /// Making the child (`clone`, or mapping its stack).
    Fork = 4,
    /// `setsid` in the child.
    Session = 5,
    /// Setting up fds 0, 1, 2 in the child.
    Stdio = 6,
    /// `setgroups`/`setgid`/`setuid` in the child.
    Identity = 7,
    /// `chdir` to `directory`.
    Chdir = 8,
    /// `execve`.
    Exec = 9,
    /// Making the process's cgroup, or setting its limits there.
    Cgroup = 10,
    /// Setting `limits` (setrlimit) in the child.
    Limits = 11,
}

impl SpawnStage {
    /// The stage whose code (`stage as u32`) is `code`.
    fn from_code(code: u32) -> Option<SpawnStage> {
        SpawnStage::ALL
            .iter()
            .copied()
            .find(|stage| *stage as u32 == code)
    }
}

/// A failed spawn: where, the OS error, and a message naming what was involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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

    /// A failure preparing what the child is given (its log pipes), before it exists.
    pub fn setup(what: &str, error: &std::io::Error) -> SpawnError {
        SpawnError {
            stage: SpawnStage::Prepare,
            errno: error.raw_os_error().map(Errno::from_raw),
            message: format!("{what}: {error}"),
        }
    }

    /// A failure without an OS error, or before the child exists.
    pub fn plain(stage: SpawnStage, message: String) -> SpawnError {
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

/// Credentials resolved before clone.
struct Identity {
    uid: Uid,
    gid: Gid,
    groups: Vec<Gid>,
}

/// Everything the child needs, as raw C data, so nothing allocates in the child.
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
    let (spawned, launch) = start(req, reaper)?;
    // Until the exec, or the exit of a child that failed before it. This
    // launch is not in `IN_FLIGHT`: nobody else frees it meanwhile.
    launch.wait_released(None);
    let failure = launch.failure();
    launch.finish();
    match failure {
        None => Ok(spawned),
        Some((stage, errno)) => {
            let program = req.argv.first().map(String::as_str).unwrap_or_default();
            Err(failure_error(stage, errno, program, &req.directory))
        }
    }
}

/// Why a spawned child may still fail: its exec has not been confirmed.
///
/// Waiting for each exec one after the other costs a supervisor starting a
/// thousand programs most of a second; instead the caller keeps this and
/// asks [`PendingReport::failure`] once the child has exited. The child
/// reports (stage, errno) before it exits, so by then the answer is there.
///
/// It holds only the launch's serial number: a small allocation per
/// process, kept for the process's life amid a spawn's temporaries, would
/// pin pages of them (with a thousand processes, about a MiB).
#[derive(Debug)]
pub struct PendingReport {
    serial: NonZeroU64,
}

impl PendingReport {
    /// The child's report of a failed exec (or earlier stage), if it made
    /// one; `program` and `directory` name what failed. Only meaningful once
    /// the child has exited.
    pub fn failure(&self, program: &str, directory: &Path) -> Option<SpawnError> {
        // A child that has exited is done with its launch: this moves its
        // report (if any) to `FAILURES`.
        sweep();
        let mut failures = failures();
        let found = failures
            .iter()
            .position(|f| f.serial == self.serial.get())?;
        let failed = failures.swap_remove(found);
        Some(failure_error(
            failed.stage,
            failed.errno,
            program,
            directory,
        ))
    }
}

impl Drop for PendingReport {
    fn drop(&mut self) {
        // Nobody will ask: a report of this launch is not to be kept.
        let mut list = in_flight();
        if let Some(launch) = list.iter_mut().find(|l| l.serial == self.serial.get()) {
            launch.abandoned = true;
            return;
        }
        drop(list);
        failures().retain(|f| f.serial != self.serial.get());
    }
}

/// A failed limit reports `errno | (resource + 1) << LIMIT_SHIFT`: errnos
/// are far below 2^16.
const LIMIT_SHIFT: u32 = 16;

fn failure_error(stage: SpawnStage, errno: i32, program: &str, directory: &Path) -> SpawnError {
    if stage == SpawnStage::Limits {
        let resource = (errno >> LIMIT_SHIFT) - 1;
        let name = crate::config::RLIMITS
            .iter()
            .find(|kind| kind.resource == resource)
            .map_or("a limit", |kind| kind.name);
        let errno = Errno::from_raw(errno & ((1 << LIMIT_SHIFT) - 1));
        let hint = if errno == Errno::EPERM {
            " (above minder's own hard limit, which needs CAP_SYS_RESOURCE, or, for nofile, above fs.nr_open)"
        } else {
            ""
        };
        return SpawnError {
            stage,
            errno: Some(errno),
            message: format!("setting limits.{name}: {}{hint}", errno.desc()),
        };
    }
    let what = match stage {
        SpawnStage::Exec => format!("exec {program:?}"),
        SpawnStage::Chdir => format!("chdir {directory:?}"),
        SpawnStage::Identity => "setting user/group".to_string(),
        SpawnStage::Session => "setsid".to_string(),
        SpawnStage::Cgroup => "joining the cgroup".to_string(),
        _ => "setting up stdio".to_string(),
    };
    SpawnError::os(stage, Errno::from_raw(errno), what)
}

/// A failed step of a child whose launch is gone, until its report is read.
struct Failed {
    serial: u64,
    stage: SpawnStage,
    errno: i32,
}

/// Reports of failed children (rare), until their [`PendingReport`] asks or
/// is dropped.
static FAILURES: Mutex<Vec<Failed>> = Mutex::new(Vec::new());

fn failures() -> MutexGuard<'static, Vec<Failed>> {
    // A poisoned lock only means a panic elsewhere while holding it; the list is still sound.
    FAILURES.lock().unwrap_or_else(|e| e.into_inner())
}

/// What the child and minder share, in the launch's mapping: the word the
/// kernel clears once the child no longer uses minder's memory, and the
/// child's report of a failed step.
struct Shared {
    /// Non-zero until the child has exec'd or exited: `CLONE_CHILD_CLEARTID`
    /// makes the kernel write 0 here then, and wake futex waiters.
    in_use: AtomicU32,
    /// The code of the stage of a failed step (`SpawnStage as u32`, 0:
    /// none); written after `errno`.
    stage: AtomicU32,
    /// The errno of the failed step.
    errno: AtomicU32,
}

/// Like [`spawn`], without waiting for the exec: failures after clone come
/// from the returned report once the child has exited.
pub fn spawn_unconfirmed(
    req: &SpawnRequest,
    reaper: &Reaper,
) -> Result<(Spawned, PendingReport), SpawnError> {
    let (spawned, launch) = start(req, reaper)?;
    let report = PendingReport {
        // Serials start at 1.
        serial: NonZeroU64::new(launch.serial).unwrap_or(NonZeroU64::MIN),
    };
    in_flight().push(launch);
    ensure_sweeper();
    Ok((spawned, report))
}

/// Serial numbers of launches.
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// Clones the child; the launch must be kept until the child is done with it.
fn start(req: &SpawnRequest, reaper: &Reaper) -> Result<(Spawned, Launch), SpawnError> {
    let prepared = prepare(req)?;
    let devnull = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| SpawnError::os(SpawnStage::Stdio, e, "open /dev/null"))?;
    let stdio = [
        req.stdin.unwrap_or(devnull.as_raw_fd()),
        output_fd(req.stdout, devnull.as_raw_fd()),
        output_fd(req.stderr, devnull.as_raw_fd()),
    ];
    make_room();
    let mut launch = Launch::new(&prepared, stdio, &req.listen_fds, &req.limits)
        .map_err(|e| SpawnError::os(SpawnStage::Fork, e, "mmap"))?;
    // Everything the child reads is in the launch's own mapping now.
    drop(prepared);

    let (exit_tx, exit_rx) = oneshot::channel();
    // Where `CLONE_PIDFD` puts the child's pidfd.
    let mut pidfd: libc::c_int = -1;
    // Every signal is blocked around clone, so the child starts with all of
    // them blocked: none can run one of minder's handlers in the child (on
    // minder's memory) before the child has reset every disposition.
    let mut previous = SigSet::empty();
    if let Err(e) = pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut previous),
    ) {
        launch.finish();
        return Err(SpawnError::os(SpawnStage::Fork, e, "blocking signals"));
    }
    let mut owners = reaper.lock();
    let (pid, clone_errno) = match req.cgroup {
        // SAFETY: every signal is blocked (above), and the launch is kept
        // until the child is done with it (`spawn` waits, `sweep` checks).
        None => unsafe { clone_joining(&launch, &mut pidfd) },
        Some(cgroup) if CLONE3.load(Ordering::Relaxed) => {
            let clone_args = CloneArgs {
                flags: CLONE_FLAGS as u32 as u64 & !0xff | CLONE_INTO_CGROUP,
                pidfd: &mut pidfd as *mut libc::c_int as u64,
                child_tid: launch.shared().in_use.as_ptr() as u64,
                parent_tid: 0,
                exit_signal: libc::SIGCHLD as u64,
                stack: launch.region.stack_bottom() as u64,
                stack_size: launch.region.stack_top() as u64 - launch.region.stack_bottom() as u64,
                tls: 0,
                set_tid: 0,
                set_tid_size: 0,
                cgroup: cgroup as u64,
            };
            // SAFETY: as for `clone` above: the same launch, the same child
            // entry point and rules, the same flags; `clone_args` lives on
            // this stack for the call, `cgroup` is an open directory fd the
            // caller keeps open until this returns.
            let result = unsafe { clone3(&clone_args, child_main, launch.args.cast_mut().cast()) };
            match Errno::from_raw(-result as i32) {
                _ if result >= 0 => (result as libc::pid_t, Errno::UnknownErrno),
                // A seccomp filter that refuses clone3 (Docker's default
                // answers ENOSYS, for libcs to fall back to clone): from
                // now on the child joins its cgroup itself.
                Errno::ENOSYS | Errno::EPERM => {
                    CLONE3.store(false, Ordering::Relaxed);
                    tracing::info!(
                        "clone3 is refused here: children join their cgroup themselves before exec"
                    );
                    // SAFETY: no child exists yet, so the launch's arguments
                    // are minder's alone to change; then as for `None`.
                    unsafe {
                        (*launch.args.cast_mut()).join_cgroup = cgroup;
                        clone_joining(&launch, &mut pidfd)
                    }
                }
                errno => (-1, errno),
            }
        }
        // SAFETY: no child exists yet, so the launch's arguments are
        // minder's alone to change; then as for `None`.
        Some(cgroup) => unsafe {
            (*launch.args.cast_mut()).join_cgroup = cgroup;
            clone_joining(&launch, &mut pidfd)
        },
    };
    // Cannot fail: the same call with the same `how` succeeded above.
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None);
    if pid < 0 {
        // No child: nothing uses the launch.
        drop(owners);
        launch.finish();
        let call = if req.cgroup.is_some() {
            "clone3 into the cgroup"
        } else {
            "clone"
        };
        return Err(SpawnError::os(SpawnStage::Fork, clone_errno, call));
    }
    let pidfd = if pidfd >= 0 {
        // SAFETY: `CLONE_PIDFD` made this descriptor for this call alone;
        // nothing else owns or closes it.
        Some(unsafe { OwnedFd::from_raw_fd(pidfd) })
    } else {
        // A kernel that ignores `CLONE_PIDFD` (before 5.2): opened by PID,
        // which is still the child's, unreaped while `owners` is locked.
        super::reaper::open_pidfd(Pid::from_raw(pid)).ok()
    };
    owners.insert(pid, Watched::child(exit_tx, pidfd));
    drop(owners);
    // The child has its own copy of the fd table (made by clone), so minder's
    // fds may close now, whatever the child has got to.
    drop(devnull);
    launch.serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    Ok((
        Spawned {
            pid: Pid::from_raw(pid),
            exit: exit_rx,
        },
        launch,
    ))
}

/// `clone` of the launch's child (which joins its cgroup itself, before
/// its exec, when its arguments say so): its PID, or -1 and the error.
///
/// # Safety
/// Every signal must be blocked in the calling thread (the child starts
/// with the caller's mask and must run none of minder's handlers), and the
/// launch must be kept, unchanged, until the kernel has cleared its
/// `in_use` (the child has exec'd or exited): `spawn` waits for that,
/// `sweep` checks it.
unsafe fn clone_joining(launch: &Launch, pidfd: &mut libc::c_int) -> (libc::pid_t, Errno) {
    // SAFETY: the launch's mapping (the child's stack and all it reads or
    // writes) stays mapped and unchanged until the child is done with it,
    // and the child starts with every signal blocked (this function's
    // contract); `child_main` keeps to the rules stated there. The kernel
    // writes the pidfd (`CLONE_PIDFD`) to `pidfd`, the caller's, before
    // clone returns, and clears `in_use` (`CLONE_CHILD_CLEARTID`) in the
    // launch, which outlives the child's use of it.
    let pid = unsafe {
        libc::clone(
            child_main,
            launch.region.stack_top(),
            CLONE_FLAGS,
            launch.args.cast_mut().cast(),
            pidfd,
            std::ptr::null_mut::<libc::c_void>(),
            (*launch.shared).in_use.as_ptr().cast::<libc::pid_t>(),
        )
    };
    (pid, Errno::last())
}

/// `CLONE_VM`: the child shares minder's memory (no copy); no `CLONE_FILES`,
/// `CLONE_FS`, `CLONE_SIGHAND` or `CLONE_THREAD`, so its fd table, cwd,
/// signal handlers and credentials are its own. `SIGCHLD` on exit, like a
/// forked child, so the reaper collects it. `CLONE_PIDFD`: a pidfd on the
/// child (close-on-exec), through which the reaper signals it. Where the
/// child cannot make system calls without glibc (see [`sys`]), `CLONE_VFORK`
/// suspends minder's thread until the exec, so the child may share that
/// thread's errno.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const CLONE_FLAGS: libc::c_int =
    libc::CLONE_VM | libc::CLONE_CHILD_CLEARTID | libc::CLONE_PIDFD | libc::SIGCHLD;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const CLONE_FLAGS: libc::c_int = libc::CLONE_VM
    | libc::CLONE_VFORK
    | libc::CLONE_CHILD_CLEARTID
    | libc::CLONE_PIDFD
    | libc::SIGCHLD;

/// Whether `clone3` may be used; false once a seccomp filter refused it.
static CLONE3: AtomicBool = AtomicBool::new(true);

/// Makes spawns take the way of a host whose seccomp filter refuses
/// `clone3`, or the usual one again; for tests of that way.
#[doc(hidden)]
pub fn set_clone3(allowed: bool) {
    CLONE3.store(allowed, Ordering::Relaxed);
}

/// `CLONE_INTO_CGROUP` (Linux 5.7): the child starts in the cgroup whose
/// directory fd is `CloneArgs::cgroup`, so neither it nor anything it forks
/// is ever outside it.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3`, with the child running `entry(arg)` on the stack `args` gives
/// (libc has no wrapper: the child starts on a new stack, with no frame of
/// the caller's to return to, so it must jump to its entry point in the
/// same piece of assembly). The result is the parent's: the child's PID or
/// `-errno`.
///
/// # Safety
/// As for `clone(2)` with `CLONE_VM`: `args` must describe a stack (and
/// everything `entry` reads) that stays valid until the child has exec'd
/// or exited, and `entry` must keep to the rules of [`child_main`] and never
/// return.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3(
    args: &CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> isize {
    let ret: isize;
    // SAFETY: the kernel's x86_64 convention (see `sys`). In the child
    // (rax = 0) the kernel has set rsp to the top of the new stack, 16-byte
    // aligned as a call needs; r12 and r13 are the parent's values (a new
    // thread of execution starts with the caller's registers), so the
    // child calls `entry(arg)`, which never returns (`ud2` if it did). The
    // parent falls through to label 2 with the result in rax.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r13",
            "call r12",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 as isize => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// `clone3`, with the child running `entry(arg)` (see the x86_64 version).
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3(
    args: &CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    arg: *mut libc::c_void,
) -> isize {
    let ret: isize;
    // SAFETY: the kernel's aarch64 convention (see `sys`). In the child
    // (x0 = 0) the kernel has set sp to the top of the new stack, 16-byte
    // aligned; x20 and x21 are the parent's values, so the child calls
    // `entry(arg)`, which never returns (`brk` if it did). The parent goes
    // on at label 2 with the result in x0.
    unsafe {
        std::arch::asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x0, x21",
            "blr x20",
            "brk #1",
            "2:",
            in("x8") libc::SYS_clone3,
            inlateout("x0") args as *const CloneArgs as usize => ret,
            in("x1") std::mem::size_of::<CloneArgs>(),
            in("x20") entry,
            in("x21") arg,
            lateout("x30") _,
            options(nostack),
        );
    }
    ret
}

/// No `clone3` here: [`super::cgroup::CAN_SPAWN_INTO_CGROUP`] is false, so
/// no request has a cgroup.
///
/// # Safety
/// None needed: it makes no system call.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn clone3(
    _: &CloneArgs,
    _: extern "C" fn(*mut libc::c_void) -> libc::c_int,
    _: *mut libc::c_void,
) -> isize {
    -(libc::ENOSYS as isize)
}

/// One child being started: a mapping holding its stack, all it reads until
/// its exec and what it shares with minder. Kept until the kernel says the
/// child is done with it. Nothing of it is on minder's heap, so launches
/// freed in any order leave no holes there.
struct Launch {
    region: Region,
    /// The child's arguments, inside `region`.
    args: *const ChildArgs,
    /// The shared words, inside `region`.
    shared: *const Shared,
    /// Names the launch for its [`PendingReport`].
    serial: u64,
    /// The report was dropped: a failure need not be kept.
    abandoned: bool,
}

// SAFETY: the mapping is owned by the launch; until the child is done with
// it minder only reads `shared`, atomically.
unsafe impl Send for Launch {}

impl Launch {
    /// Lays out the child's arguments in a mapping of their own.
    fn new(
        prepared: &Prepared,
        stdio: [RawFd; 3],
        listen: &[RawFd],
        limits: &[(i32, u64)],
    ) -> Result<Launch, Errno> {
        let strings = |list: &[CString]| {
            list.iter()
                .map(|s| s.as_bytes_with_nul().len())
                .sum::<usize>()
        };
        let groups = prepared.identity.as_ref().map_or(0, |id| id.groups.len());
        let slots_len: usize = prepared.pid_slots.iter().map(Vec::len).sum();
        // Generous: every item may need up to 8 bytes of alignment padding.
        let items = 9 + prepared.argv.len() + prepared.envp.len() + 2 * prepared.pid_slots.len();
        let size = std::mem::size_of::<ChildArgs>()
            + std::mem::size_of::<Shared>()
            + prepared.path.as_bytes_with_nul().len()
            + prepared.directory.as_bytes_with_nul().len()
            + strings(&prepared.argv)
            + strings(&prepared.envp)
            + slots_len
            + (prepared.argv.len() + prepared.envp.len() + prepared.pid_slots.len() + 2)
                * std::mem::size_of::<*const libc::c_char>()
            + prepared.pid_slots.len() * std::mem::size_of::<(*mut u8, usize)>()
            + groups * std::mem::size_of::<libc::gid_t>()
            + std::mem::size_of_val(listen)
            + limits.len() * std::mem::size_of::<ChildLimit>()
            + items * 8;
        let region = Region::take(size)?;
        // SAFETY: the data area of a mapping this launch owns and no child
        // uses yet, large enough for everything written (`size`).
        let (args, shared) = unsafe {
            let mut w = Writer::new(region.data(), size);
            let shared = w.array::<Shared>(1);
            shared.write(Shared {
                in_use: AtomicU32::new(1),
                stage: AtomicU32::new(0),
                errno: AtomicU32::new(0),
            });
            let path = w.c_string(&prepared.path);
            let directory = w.c_string(&prepared.directory);
            let argv = w.array::<*const libc::c_char>(prepared.argv.len() + 1);
            for (i, arg) in prepared.argv.iter().enumerate() {
                *argv.add(i) = w.c_string(arg);
            }
            *argv.add(prepared.argv.len()) = std::ptr::null();
            // `NAME=` and room for the PID: the child writes the digits.
            let slots = w.array::<(*mut u8, usize)>(prepared.pid_slots.len());
            for (i, slot) in prepared.pid_slots.iter().enumerate() {
                let at = w.bytes(slot);
                *slots.add(i) = (at, slot.len() - PID_DIGITS);
            }
            let n_env = prepared.envp.len() + prepared.pid_slots.len();
            let envp = w.array::<*const libc::c_char>(n_env + 1);
            for (i, var) in prepared.envp.iter().enumerate() {
                *envp.add(i) = w.c_string(var);
            }
            for i in 0..prepared.pid_slots.len() {
                *envp.add(prepared.envp.len() + i) = (*slots.add(i)).0.cast_const().cast();
            }
            *envp.add(n_env) = std::ptr::null();
            let (uid, gid, group_list, n_groups) = match &prepared.identity {
                Some(id) => {
                    let list = w.array::<libc::gid_t>(id.groups.len());
                    for (i, g) in id.groups.iter().enumerate() {
                        *list.add(i) = g.as_raw();
                    }
                    (
                        Some(id.uid.as_raw()),
                        id.gid.as_raw(),
                        list,
                        id.groups.len(),
                    )
                }
                None => (None, 0, std::ptr::null_mut(), 0),
            };
            // The child rewrites this in place while moving fds.
            let scratch = w.array::<libc::c_int>(listen.len());
            for (i, fd) in listen.iter().enumerate() {
                *scratch.add(i) = *fd;
            }
            let limit_list = w.array::<ChildLimit>(limits.len());
            for (i, (resource, value)) in limits.iter().enumerate() {
                limit_list.add(i).write(ChildLimit {
                    resource: *resource as u32,
                    limit: Rlimit64 {
                        cur: *value,
                        max: *value,
                    },
                });
            }
            let args = w.array::<ChildArgs>(1);
            args.write(ChildArgs {
                path,
                argv,
                envp,
                directory,
                uid,
                gid,
                groups: group_list,
                n_groups,
                stdio,
                // `rlim_t` is 32 bits wide on some targets.
                #[allow(clippy::unnecessary_cast)]
                nofile: CHILD_NOFILE.get().map(|l| Rlimit64 {
                    cur: l.rlim_cur as u64,
                    max: l.rlim_max as u64,
                }),
                pid_slots: slots,
                n_slots: prepared.pid_slots.len(),
                listen: scratch,
                n_listen: listen.len(),
                limits: limit_list,
                n_limits: limits.len(),
                join_cgroup: -1,
                shared,
            });
            (args.cast_const(), shared.cast_const())
        };
        Ok(Launch {
            region,
            args,
            shared,
            serial: 0,
            abandoned: false,
        })
    }

    fn shared(&self) -> &Shared {
        // SAFETY: inside the launch's mapping, alive as long as the launch.
        unsafe { &*self.shared }
    }

    fn released(&self) -> bool {
        self.shared().in_use.load(Ordering::Acquire) == 0
    }

    /// Waits until the child is done with the launch, at most `timeout` if
    /// given; true if it is.
    fn wait_released(&self, timeout: Option<Duration>) -> bool {
        let word = &self.shared().in_use;
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let value = word.load(Ordering::Acquire);
            if value == 0 {
                return true;
            }
            let left = match deadline {
                None => None,
                Some(at) => match at.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(libc::timespec {
                        tv_sec: left.as_secs() as libc::time_t,
                        tv_nsec: left.subsec_nanos() as libc::c_long,
                    }),
                    _ => return false,
                },
            };
            let left_ptr = left
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: FUTEX_WAIT only reads the word, in the launch's mapping.
            // Not FUTEX_PRIVATE_FLAG: the kernel's wake when it clears the
            // word is a shared-futex wake. EINTR, EAGAIN (the word changed)
            // and ETIMEDOUT all lead back to the check above.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word.as_ptr(),
                    libc::FUTEX_WAIT,
                    value,
                    left_ptr,
                );
            }
        }
    }

    /// The child's report of a failed step, once it is done with the launch.
    fn failure(&self) -> Option<(SpawnStage, i32)> {
        let shared = self.shared();
        let code = shared.stage.load(Ordering::Acquire);
        if code == 0 {
            return None;
        }
        // The child writes only codes of stages (`fail` takes a
        // `SpawnStage`); should another number ever be read, the child still
        // failed, and exec is its last step.
        let stage = SpawnStage::from_code(code).unwrap_or(SpawnStage::Exec);
        Some((stage, shared.errno.load(Ordering::Relaxed) as i32))
    }

    /// Frees the launch of a child that is done with it (or never existed),
    /// keeping its mapping for the next one.
    fn finish(self) {
        self.region.give_back();
    }
}

/// Places values one after the other in a launch's data area.
struct Writer {
    at: usize,
    end: usize,
}

impl Writer {
    fn new(data: *mut u8, size: usize) -> Writer {
        Writer {
            at: data as usize,
            end: data as usize + size,
        }
    }

    /// Room for `count` values of `T`, aligned.
    ///
    /// # Safety
    /// The area must be writable and hold what is asked (see `Launch::new`).
    unsafe fn array<T>(&mut self, count: usize) -> *mut T {
        let align = std::mem::align_of::<T>();
        let start = (self.at + align - 1) & !(align - 1);
        self.at = start + count * std::mem::size_of::<T>();
        // Never past the mapping: `Launch::new` computes a generous size.
        assert!(self.at <= self.end, "launch data larger than computed");
        start as *mut T
    }

    /// A copy of `bytes`.
    ///
    /// # Safety
    /// As for [`Writer::array`].
    unsafe fn bytes(&mut self, bytes: &[u8]) -> *mut u8 {
        // SAFETY: room for `bytes.len()` bytes in the area, which the
        // caller vouches is writable; a fresh part of it, so it cannot
        // overlap `bytes` (which lives outside the launch).
        unsafe {
            let at = self.array::<u8>(bytes.len());
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), at, bytes.len());
            at
        }
    }

    /// A copy of `s` with its NUL.
    ///
    /// # Safety
    /// As for [`Writer::array`].
    unsafe fn c_string(&mut self, s: &CString) -> *const libc::c_char {
        // SAFETY: the caller's contract is `bytes`'s.
        unsafe { self.bytes(s.as_bytes_with_nul()) }
            .cast_const()
            .cast()
    }
}

/// Launches of children that may still use them, oldest first.
static IN_FLIGHT: Mutex<Vec<Launch>> = Mutex::new(Vec::new());

/// At most this many children in flight: beyond it a spawn first waits
/// (briefly) for the oldest, so children that get no CPU cannot make
/// minder hold launches without bound.
const MAX_IN_FLIGHT: usize = 64;

/// How long a spawn waits for the oldest child in flight when there are
/// [`MAX_IN_FLIGHT`]; a child stopped before its exec must not stop minder.
const ROOM_WAIT: Duration = Duration::from_millis(20);

/// How often finished launches are freed while some are in flight.
const SWEEP_EVERY: Duration = Duration::from_millis(5);

/// Whether a sweeper task is running.
static SWEEPER: AtomicBool = AtomicBool::new(false);

fn in_flight() -> MutexGuard<'static, Vec<Launch>> {
    // A poisoned lock only means a panic elsewhere while holding it; the list is still sound.
    IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner())
}

/// Frees the launches whose children are done with them, keeping their
/// reports of failure; true if some remain.
fn sweep() -> bool {
    let mut list = in_flight();
    let mut i = 0;
    while i < list.len() {
        if !list[i].released() {
            i += 1;
            continue;
        }
        let launch = list.remove(i);
        if let (Some((stage, errno)), false) = (launch.failure(), launch.abandoned) {
            failures().push(Failed {
                serial: launch.serial,
                stage,
                errno,
            });
        }
        launch.finish();
    }
    !list.is_empty()
}

/// Frees what it can, and waits for the oldest child if too many are in flight.
fn make_room() {
    if !sweep() {
        return;
    }
    let list = in_flight();
    if list.len() >= MAX_IN_FLIGHT {
        // Waited for with the list locked: nobody frees the launch meanwhile.
        if let Some(oldest) = list.first() {
            oldest.wait_released(Some(ROOM_WAIT));
        }
        drop(list);
        sweep();
    }
}

/// Frees finished launches soon after a burst of spawns: a task that sweeps
/// every [`SWEEP_EVERY`] while any are in flight (outside a runtime, the next
/// spawn sweeps).
fn ensure_sweeper() {
    if SWEEPER.swap(true, Ordering::AcqRel) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        SWEEPER.store(false, Ordering::Release);
        return;
    };
    runtime.spawn(async {
        let _running = SweeperRunning;
        while sweep() {
            tokio::time::sleep(SWEEP_EVERY).await;
        }
    });
}

/// Marks the sweeper stopped when its task ends (or its runtime does).
struct SweeperRunning;

impl Drop for SweeperRunning {
    fn drop(&mut self) {
        SWEEPER.store(false, Ordering::Release);
    }
}

/// Size of a child's stack; `child` needs well under 4 KiB.
const STACK_SIZE: usize = 16 * 1024;

/// Smallest data area of a launch's mapping: room for minder's environment
/// and a command line of common size, so one mapping serves most launches.
const MIN_DATA: usize = 16 * 1024;

/// Mappings of finished launches kept for the next ones.
const SPARE_REGIONS: usize = 2;

static SPARES: Mutex<Vec<Region>> = Mutex::new(Vec::new());

/// A launch's mapping: a guard page (so a stack overflow faults instead of
/// writing into whatever lies below), the child's stack, then its data.
struct Region {
    base: NonNull<libc::c_void>,
    len: usize,
    page: usize,
}

// SAFETY: a mapping owned by whoever holds the value.
unsafe impl Send for Region {}

impl Region {
    /// A mapping with at least `data` bytes of data area.
    fn take(data: usize) -> Result<Region, Errno> {
        let spare = {
            let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
            let fits = spares.iter().position(|r| r.data_len() >= data);
            fits.map(|i| spares.swap_remove(i))
        };
        match spare {
            Some(region) => Ok(region),
            None => Region::map(data.max(MIN_DATA)),
        }
    }

    fn map(data: usize) -> Result<Region, Errno> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .unwrap_or(4096) as usize;
        let len = (page + STACK_SIZE + data).div_ceil(page) * page;
        // SAFETY: a fresh anonymous mapping, owned by the returned value.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(Errno::last());
        }
        let base = NonNull::new(base).ok_or(Errno::ENOMEM)?;
        let region = Region { base, len, page };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base.as_ptr(), page, libc::PROT_NONE) } < 0 {
            return Err(Errno::last());
        }
        Ok(region)
    }

    /// The child's initial stack pointer (stacks grow down on every Linux
    /// target minder builds for), 16-byte aligned.
    fn stack_top(&self) -> *mut libc::c_void {
        let top = self.base.as_ptr() as usize + self.page + STACK_SIZE;
        (top & !15) as *mut libc::c_void
    }

    /// The lowest address of the child's stack (above the guard page).
    fn stack_bottom(&self) -> *mut libc::c_void {
        (self.base.as_ptr() as usize + self.page) as *mut libc::c_void
    }

    /// The start of the data area (above the stack).
    fn data(&self) -> *mut u8 {
        (self.base.as_ptr() as usize + self.page + STACK_SIZE) as *mut u8
    }

    fn data_len(&self) -> usize {
        self.len - self.page - STACK_SIZE
    }

    fn give_back(self) {
        let mut spares = SPARES.lock().unwrap_or_else(|e| e.into_inner());
        if spares.len() < SPARE_REGIONS {
            spares.push(self);
        }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, no longer used by any child.
        unsafe {
            libc::munmap(self.base.as_ptr(), self.len);
        }
    }
}

fn output_fd(output: Output, devnull: RawFd) -> RawFd {
    match output {
        Output::MinderStderr => 2,
        Output::Null => devnull,
        Output::Fd(fd) => fd,
    }
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
        Some(name) => Some(
            crate::users::user(name)
                .map_err(|e| cred_err(format!("looking up user {name:?}: {}", e.desc())))?
                .ok_or_else(|| cred_err(format!("no such user {name:?}")))?,
        ),
    };
    let gid = match group {
        Some(name) => {
            crate::users::group(name)
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

/// `struct rlimit64` of the `prlimit64` system call.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct Rlimit64 {
    cur: u64,
    max: u64,
}

/// One entry of `limits`, as the child sets it with `prlimit64`.
#[derive(Debug, Clone, Copy)]
#[repr(C)]
struct ChildLimit {
    resource: u32,
    limit: Rlimit64,
}

/// What the child reads, as raw C data prepared before clone.
struct ChildArgs {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    directory: *const libc::c_char,
    /// `Some` when the identity changes: then `gid` and `groups` apply too.
    uid: Option<libc::uid_t>,
    gid: libc::gid_t,
    groups: *const libc::gid_t,
    n_groups: usize,
    /// Sources of fds 0, 1 and 2.
    stdio: [libc::c_int; 3],
    nofile: Option<Rlimit64>,
    pid_slots: *const (*mut u8, usize),
    n_slots: usize,
    /// Sources of fds 3..; rewritten by the child.
    listen: *mut libc::c_int,
    n_listen: usize,
    /// `limits`, set after the fd limit minder restores.
    limits: *const ChildLimit,
    n_limits: usize,
    /// A cgroup directory (fd of minder's) the child moves itself into
    /// first, where `clone3` could not start it there; -1 for none.
    join_cgroup: libc::c_int,
    /// Where a failed step is reported.
    shared: *const Shared,
}

/// A system call that leaves errno alone (the child shares the TLS of the
/// minder thread that made it, which runs on): the result, or `-errno`.
///
/// # Safety
/// That of system call `n` with these arguments: every pointer among `a`
/// must be valid for what the call reads or writes through it, and the call
/// must not break what Rust code relies on (e.g. close an fd someone owns).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn sys(n: libc::c_long, a: [usize; 4]) -> isize {
    let ret: isize;
    // SAFETY: the kernel's x86_64 convention: number in rax, arguments in
    // rdi, rsi, rdx, r10, result in rax, rcx and r11 clobbered by the
    // instruction; it pushes nothing on our stack. Memory is not marked
    // untouched, so the compiler assumes the call may read or write any of
    // it. What the call itself does is the caller's contract.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// A system call that leaves errno alone (see the x86_64 version).
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
unsafe fn sys(n: libc::c_long, a: [usize; 4]) -> isize {
    let ret: isize;
    // SAFETY: the kernel's aarch64 convention: number in x8, arguments in
    // x0..x3, result in x0; `svc` pushes nothing on our stack. Memory is not
    // marked untouched, so the compiler assumes the call may read or write
    // any of it. What the call itself does is the caller's contract.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a[0] as isize => ret,
            in("x1") a[1],
            in("x2") a[2],
            in("x3") a[3],
            options(nostack),
        );
    }
    ret
}

/// A system call through glibc, which sets errno: only safe because on
/// these targets the child runs under `CLONE_VFORK` (see [`CLONE_FLAGS`]).
///
/// # Safety
/// As for the x86_64 version.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn sys(n: libc::c_long, a: [usize; 4]) -> isize {
    // SAFETY: what the call does is the caller's contract. It writes errno
    // in the TLS the child shares with the minder thread that cloned it,
    // which `CLONE_VFORK` keeps suspended until the child has exec'd or
    // exited, so nothing else reads or writes that errno meanwhile.
    unsafe {
        let ret = libc::syscall(n, a[0], a[1], a[2], a[3]);
        if ret == -1 {
            -(*libc::__errno_location() as isize)
        } else {
            ret as isize
        }
    }
}

/// Identity system calls, made directly: glibc's `setuid` and friends in a
/// process with threads signal every thread to change too, and the cloned
/// child would do that to minder's threads (it shares their memory, so
/// glibc believes it is one of them). The 32-bit x86 and arm targets have
/// 16-bit versions under these names, hence the `32` calls there.
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
mod ids {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups;
    pub const SETGID: libc::c_long = libc::SYS_setgid;
    pub const SETUID: libc::c_long = libc::SYS_setuid;
}
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
mod ids {
    pub const SETGROUPS: libc::c_long = libc::SYS_setgroups32;
    pub const SETGID: libc::c_long = libc::SYS_setgid32;
    pub const SETUID: libc::c_long = libc::SYS_setuid32;
}

/// The highest signal number (`_NSIG - 1` on the Linux targets minder builds for).
const LAST_SIGNAL: libc::c_int = 64;

/// Entry point of the cloned child.
///
/// It runs on its own stack but in minder's memory (`CLONE_VM`) and on the
/// TLS of the minder thread that called clone, which goes on running
/// (as do minder's other threads). Hence the rules it keeps until `execve`:
/// - only raw system calls ([`sys`]): no allocation, no lock, no errno, no
///   thread-local, no panic, nothing of Rust's runtime or glibc's;
/// - it reads only its launch, which minder keeps unchanged until the kernel
///   has cleared `in_use` (at the exec, or at the child's exit), and writes
///   only what minder set aside for it there: the PID slots, the listen fd
///   scratch and the failure report;
/// - no handler of minder's may run in it: every signal is blocked when it
///   starts and it resets every disposition before unblocking them. Its
///   signal handlers, fd table, cwd, session, rlimits and credentials are
///   its own copies (see [`CLONE_FLAGS`]), so changing them changes nothing
///   of minder's;
/// - it ends in `execve` or `exit_group` (which ends only the child: it is a
///   thread group of its own).
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` of the launch this child was cloned
    // with (`start` passes `launch.args`), which stays mapped and unchanged
    // until the child execs or exits; this is the cloned child, on the
    // launch's stack.
    unsafe { child(&*arg.cast::<ChildArgs>()) }
}

/// The child's steps; see [`child_main`] for the rules.
///
/// # Safety
/// Only in the cloned child, with `args` (and all it points to) the
/// arguments of its launch, kept mapped and unchanged by minder until the
/// child execs or exits.
unsafe fn child(args: &ChildArgs) -> ! {
    // Signal dispositions: handlers are minder's code and would run on
    // minder's memory; ignored signals (Rust ignores SIGPIPE) would be
    // inherited through exec. An all-zero kernel `sigaction` is SIG_DFL, no
    // flags, empty mask, whatever the architecture's layout; the raw call
    // also reaches the signals glibc keeps for itself.
    let default = [0u64; 4];
    for sig in 1..=LAST_SIGNAL {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: the kernel reads a `struct sigaction` (at most 32
            // bytes on these targets) from `default`, on this stack, and
            // writes no old action (null); the dispositions changed are the
            // child's own (no `CLONE_SIGHAND`), and every signal is blocked.
            unsafe {
                sys(
                    libc::SYS_rt_sigaction,
                    [sig as usize, default.as_ptr() as usize, 0, 8],
                );
            }
        }
    }
    // Then nothing blocked, as a freshly started program expects.
    let empty = 0u64;
    // SAFETY: the kernel reads the 8-byte mask `empty`, on this stack, and
    // writes no old mask (null); no handler of minder's is left to run.
    unsafe {
        sys(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_SETMASK as usize,
                &empty as *const u64 as usize,
                0,
                8,
            ],
        );
    }
    if args.join_cgroup >= 0 {
        // Before anything of the program runs, and so before anything can
        // fork: the child is never outside its cgroup while it runs code
        // that is not minder's.
        // SAFETY: openat reads the NUL-terminated name (a static of the
        // binary, mapped for the child too) relative to `join_cgroup`, an
        // open directory fd of the child's own copy of minder's fd table;
        // write reads one byte of a static; close closes the fd just
        // opened. Then the launch's failure report, as above.
        unsafe {
            let procs = sys(
                libc::SYS_openat,
                [
                    args.join_cgroup as usize,
                    c"cgroup.procs".as_ptr() as usize,
                    (libc::O_WRONLY | libc::O_CLOEXEC) as usize,
                    0,
                ],
            );
            check(args, SpawnStage::Cgroup, procs);
            let joined = sys(
                libc::SYS_write,
                [procs as usize, b"0".as_ptr() as usize, 1, 0],
            );
            check(args, SpawnStage::Cgroup, joined);
            sys(libc::SYS_close, [procs as usize, 0, 0, 0]);
        }
    }
    // SAFETY: setsid takes no argument and changes only the child's session.
    let session = unsafe { sys(libc::SYS_setsid, [0; 4]) };
    // SAFETY: the launch's failure report, per this function's contract.
    unsafe { check(args, SpawnStage::Session, session) };
    // SAFETY: getpid takes no argument.
    let pid = unsafe { sys(libc::SYS_getpid, [0; 4]) } as libc::pid_t;
    for i in 0..args.n_slots {
        // SAFETY: `pid_slots` holds `n_slots` (slot, prefix) pairs, and each
        // slot is `NAME=` (`prefix` bytes) followed by `PID_DIGITS` bytes
        // of room, all in the launch, written by nothing but this child
        // until it execs (`Launch::new`).
        unsafe {
            let (slot, prefix) = *args.pid_slots.add(i);
            write_decimal(slot.add(prefix), pid);
        }
    }
    // Targets: 0, 1, 2 for stdio, then 3.. for the listen sockets. First move
    // every source above the last target (close-on-exec copies), so placing
    // one cannot clobber another that is still to be placed.
    // SAFETY: `listen` is the launch's scratch of `n_listen` ints (aligned
    // and non-null even when empty), which nothing but this child reads or
    // writes until it execs (`Launch::new`).
    let listen = unsafe { std::slice::from_raw_parts_mut(args.listen, args.n_listen) };
    let first_free = 3 + args.n_listen;
    let mut stdio = args.stdio;
    for fd in stdio.iter_mut().chain(listen.iter_mut()) {
        // SAFETY: F_DUPFD_CLOEXEC takes no pointer and changes only the
        // child's own fd table (no `CLONE_FILES`).
        let moved = unsafe {
            sys(
                libc::SYS_fcntl,
                [*fd as usize, libc::F_DUPFD_CLOEXEC as usize, first_free, 0],
            )
        };
        // SAFETY: the launch's failure report, per this function's contract.
        unsafe { check(args, SpawnStage::Stdio, moved) };
        *fd = moved as libc::c_int;
    }
    // dup3 (dup2 is missing on some architectures) clears close-on-exec on
    // the target; source and target always differ here.
    for (target, source) in stdio.into_iter().chain(listen.iter().copied()).enumerate() {
        // SAFETY: dup3 takes no pointer and changes only the child's own fd
        // table; then the launch's failure report, as above.
        unsafe {
            let placed = sys(libc::SYS_dup3, [source as usize, target, 0, 0]);
            check(args, SpawnStage::Stdio, placed);
        }
    }
    // Nothing else survives exec, whatever minder itself inherited. Marked
    // rather than closed: the exec closes them.
    // SAFETY: close_range takes no pointer; it only marks fds of the child's
    // own table close-on-exec.
    unsafe {
        sys(
            libc::SYS_close_range,
            [
                first_free,
                u32::MAX as usize,
                libc::CLOSE_RANGE_CLOEXEC as usize,
                0,
            ],
        );
    }
    if let Some(limit) = &args.nofile {
        // Lowering can only fail for an invalid value; the child then keeps minder's.
        // SAFETY: the kernel reads the `Rlimit64` (the layout of its
        // `struct rlimit64`) in the launch and writes no old limit (null);
        // the limit changed is the child's own (pid 0: the caller).
        unsafe {
            sys(
                libc::SYS_prlimit64,
                [
                    0,
                    libc::RLIMIT_NOFILE as usize,
                    limit as *const Rlimit64 as usize,
                    0,
                ],
            );
        }
    }
    for i in 0..args.n_limits {
        // SAFETY: `limits` holds `n_limits` entries in the launch
        // (`Launch::new`); the kernel reads the `Rlimit64` of each (the
        // layout of its `struct rlimit64`) and writes no old limit (null);
        // the limit changed is the child's own (pid 0). Set before the
        // identity changes, so a hard limit may be raised as root. Then the
        // launch's failure report, as above.
        unsafe {
            let entry = &*args.limits.add(i);
            let set = sys(
                libc::SYS_prlimit64,
                [
                    0,
                    entry.resource as usize,
                    &entry.limit as *const Rlimit64 as usize,
                    0,
                ],
            );
            // Which limit it was rides above the errno (see `failure_error`).
            let which = (entry.resource as isize + 1) << LIMIT_SHIFT;
            check(
                args,
                SpawnStage::Limits,
                if set < 0 { set - which } else { set },
            );
        }
    }
    if let Some(uid) = args.uid {
        // SAFETY: setgroups reads `n_groups` gids from the launch's list
        // (`Launch::new`); setgid and setuid take no pointer. The raw calls
        // change the credentials of the child alone (see `ids`); then the
        // launch's failure report, as above.
        unsafe {
            let groups = sys(ids::SETGROUPS, [args.n_groups, args.groups as usize, 0, 0]);
            check(args, SpawnStage::Identity, groups);
            let gid = sys(ids::SETGID, [args.gid as usize, 0, 0, 0]);
            check(args, SpawnStage::Identity, gid);
            let uid = sys(ids::SETUID, [uid as usize, 0, 0, 0]);
            check(args, SpawnStage::Identity, uid);
        }
    }
    // SAFETY: chdir reads the NUL-terminated `directory` in the launch and
    // changes the child's own cwd (no `CLONE_FS`); then the failure report.
    unsafe {
        let chdir = sys(libc::SYS_chdir, [args.directory as usize, 0, 0, 0]);
        check(args, SpawnStage::Chdir, chdir);
    }
    // SAFETY: execve reads the NUL-terminated `path` and the null-terminated
    // `argv` and `envp` arrays of NUL-terminated strings, all in the launch
    // (`Launch::new`); on success the child leaves minder's memory. On
    // failure, the launch's failure report, as above.
    unsafe {
        let result = sys(
            libc::SYS_execve,
            [
                args.path as usize,
                args.argv as usize,
                args.envp as usize,
                0,
            ],
        );
        fail(args, SpawnStage::Exec, result)
    }
}

/// Writes `n` in decimal followed by a NUL at `at` (room: [`PID_DIGITS`] bytes);
/// no allocation, so it may run between clone and exec.
///
/// # Safety
/// `at` must be valid for writes of [`PID_DIGITS`] bytes.
unsafe fn write_decimal(at: *mut u8, n: libc::pid_t) {
    let mut digits = [0u8; PID_DIGITS];
    let mut len = 0;
    let mut rest = n.unsigned_abs();
    for digit in digits.iter_mut().take(PID_DIGITS - 1) {
        *digit = b'0' + (rest % 10) as u8;
        len += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    for (i, digit) in digits.iter().take(len).rev().enumerate() {
        // SAFETY: `i < len < PID_DIGITS`, within the room the caller vouches for.
        unsafe { *at.add(i) = *digit };
    }
    // SAFETY: `len < PID_DIGITS`, as above.
    unsafe { *at.add(len) = 0 };
}

/// Fails the step `stage` if a system call returned `-errno`.
///
/// # Safety
/// As for [`fail`].
unsafe fn check(args: &ChildArgs, stage: SpawnStage, result: isize) {
    if result < 0 {
        // SAFETY: the caller's contract is `fail`'s.
        unsafe { fail(args, stage, result) };
    }
}

/// Reports (stage, errno) to minder and exits without running any destructor.
///
/// # Safety
/// Only in the cloned child, with `args` the arguments of its launch (so
/// `shared` points to the launch's shared words, mapped until the child
/// has exited).
unsafe fn fail(args: &ChildArgs, stage: SpawnStage, result: isize) -> ! {
    // SAFETY: `shared` points into the launch, mapped until the kernel has
    // cleared `in_use` at this child's exit; minder only reads it, atomically.
    let shared = unsafe { &*args.shared };
    shared
        .errno
        .store(result.unsigned_abs() as u32, Ordering::Relaxed);
    // Release: minder reads `errno` after seeing the stage.
    shared.stage.store(stage as u32, Ordering::Release);
    loop {
        // SAFETY: exit_group takes no pointer and ends the child alone (a
        // thread group of its own); it does not return.
        unsafe { sys(libc::SYS_exit_group, [127, 0, 0, 0]) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spawn_stage_round_trips_through_its_code() {
        let mut codes = Vec::new();
        for &stage in SpawnStage::ALL {
            let code = stage as u32;
            // 0 is "no failure" in the shared report.
            assert_ne!(code, 0, "{stage:?}");
            assert!(!codes.contains(&code), "{stage:?} shares code {code}");
            codes.push(code);
            assert_eq!(SpawnStage::from_code(code), Some(stage));
        }
        assert_eq!(SpawnStage::from_code(0), None);
    }
}
