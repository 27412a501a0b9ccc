//! The ledger of main processes: what a new minder needs to stop the
//! programs a killed predecessor left running, where no cgroup tells it.
//!
//! A [`Ledger`] is an append-only text file next to the control socket
//! ([`ledger_path`]: `<socket>.pids`). Each program process minder spawns is
//! recorded with its start time (field 22 of `/proc/PID/stat`, clock ticks
//! since boot) when it starts, and forgotten when it ends:
//!
//! ```text
//! boot 0f3c…            the boot the entries belong to (/proc/sys/kernel/random/boot_id)
//! + 4242 8812345        process 4242, started at tick 8812345
//! - 4242 8812345        … has ended
//! ```
//!
//! Each [`Ledger::record`] and [`Ledger::forget`] is one `write(2)` on an
//! `O_APPEND` descriptor, a few microseconds. The file is never read while
//! minder runs: the live set is kept in memory, and when the file holds more
//! than twice as many lines as there are live entries (plus 64), it is
//! rewritten from that set (a temporary file renamed over it, in the same
//! directory, so a crash leaves the old or the new file, never half of one).
//! A failed write (a full disk) never fails a spawn: it is logged once, and
//! the next call rewrites the whole file, so one lost line does not stay
//! lost once the disk has room again.
//!
//! After a re-exec, the new image [`Ledger::open`]s the file and carries on
//! with its predecessor's entries (its children were kept). On a fresh
//! start, [`recover`] stops what the entries still name, then removes the
//! file.
//!
//! # Which processes `recover` stops
//!
//! Every program process is a session and process-group leader (minder's
//! spawn calls `setsid`), so its PID is also its group and session id, and
//! its descendants that did not `setsid` themselves are in its session,
//! most of them in its group. For each entry:
//!
//! - The PID alive with the recorded start time: the leader. Its group and
//!   session are stopped with it. A PID whose start time differs was
//!   recycled and is never touched, nor its group. The check is made
//!   race-free by opening a pidfd first and reading the start time after:
//!   if it still matches, the pidfd names the recorded process (a PID cannot
//!   have been the original's and another's at once). Signals then go
//!   through the pidfd (`pidfd_send_signal` with `PIDFD_SIGNAL_PROCESS_GROUP`,
//!   Linux 6.9), which names the group by the kernel's `struct pid` the
//!   pidfd holds, not by number: it reaches the group even after the leader
//!   has exited. On an older kernel minder falls back to `killpg`, only
//!   while the leader's pidfd shows it alive (a live leader keeps its number
//!   from reuse); what remains there is the instant between that check and
//!   the signal.
//! - The PID gone, but processes of its session remain (`sh -c 'server &
//!   wait'` whose `sh` was killed while minder was down): they keep the
//!   number in use as their session id, so it cannot have been given to
//!   another process since they were made. They are found in one scan of
//!   `/proc` (session id equal to the recorded PID, start time not before
//!   the recorded one) and each is stopped through a pidfd of its own. The
//!   limit: had the whole session ended, the number been recycled to
//!   another session leader, and that leader ended too, leaving members,
//!   those would look the same; this needs the PID space to wrap around
//!   (`pid_max`: 4194304 where systemd sets it, as it does by default) in
//!   that window, and the chance is accepted against leaving a server
//!   holding its port. A
//!   process such a member forks during the grace period is not seen.
//! - A process that left the session with its own `setsid` is out of
//!   reach: without a cgroup nothing links it to the program any more.
//!
//! Everything found gets SIGTERM; minder waits up to the grace period for
//! each to exit (`poll(2)` on the pidfds: the processes are not minder's
//! children, `waitpid` does not apply, and a pidfd becomes readable when its
//! process exits); the groups of those that are left get SIGKILL, and
//! minder waits (a bounded time) for those to go too, so that the ports
//! they held are free when the programs start again. Without pidfds (Linux
//! before 5.3) nothing is signalled: a PID cannot be checked safely, and
//! the entries are only reported in the log.
//!
//! # The file
//!
//! It is created 0600 and never through a symbolic link (`O_NOFOLLOW`); an
//! existing file that is not a regular file, not owned by minder's user, or
//! has other hard links is refused with an error saying which. It is read
//! with a bound ([`MAX_FILE_BYTES`], [`MAX_FILE_LINES`]); a line that does
//! not parse is skipped and counted, never a panic. Entries of another boot
//! (the `boot` line differs) are dropped: the start times they carry
//! belong to a clock that no longer runs.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::reaper::{open_pidfd, pidfd_send_signal, PIDFD_SIGNAL_PROCESS_GROUP};

/// At most this much of a ledger file is read; the rest is ignored (and
/// logged). A compacted file holds about 20 bytes per live process.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// At most this many lines of a ledger file are read.
pub const MAX_FILE_LINES: usize = 100_000;

/// The file is rewritten once it has more than twice as many lines as
/// there are live entries, plus this many.
const COMPACT_SLACK: usize = 64;

/// How long [`recover`] waits for processes to go after SIGKILL (a process
/// in uninterruptible sleep can take a while); then it carries on.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// At most this many `/proc` entries are looked at in the scan for the
/// members of a group (`pid_max` is at most 4194304).
const MAX_PROC_SCAN: usize = 1 << 22;

/// A program's command, as reported, is cut to this many characters.
const MAX_COMMAND_CHARS: usize = 200;

/// Where the daemon keeps the ledger of the minder serving `socket`: next
/// to it, as `<socket>.pids` (`/run/minder/minder.sock.pids`).
pub fn ledger_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_os_string();
    name.push(".pids");
    PathBuf::from(name)
}

/// The append-only record of the main processes minder has running; shared
/// (behind an `Arc`) by everything that spawns or reaps.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    /// The boot the file's entries belong to, written at its top.
    boot: Option<String>,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// `O_APPEND`, on the file now at `path`.
    file: File,
    /// PID → start time of each process recorded and not forgotten.
    live: HashMap<i32, u64>,
    /// Lines in the file (the `boot` line included).
    lines: usize,
    /// A write failed: the file may lack lines, the next call rewrites it.
    stale: bool,
    /// The failure has been logged (reset by the next success).
    warned: bool,
}

impl Ledger {
    /// Opens the ledger at `path`, keeping the entries already there that
    /// still name their process (after a re-exec, whose children were
    /// kept), and creating the file if there is none. The file is rewritten
    /// at once from those entries, with this boot's id at its top.
    ///
    /// On a fresh start, call [`recover`] first: it stops what a killed
    /// predecessor left and removes the file.
    pub fn open(path: &Path) -> io::Result<Ledger> {
        let boot = boot_id();
        let mut live = HashMap::new();
        if let Some(contents) = read_checked(path)? {
            let parsed = parse(&contents.bytes, contents.truncated);
            parsed.log_problems(path);
            if parsed.boot.is_some() && boot.is_some() && parsed.boot != boot {
                tracing::info!(
                    path = %path.display(),
                    "the process ledger is from an earlier boot; its entries are dropped"
                );
            } else {
                // A process that ended while no minder watched, or whose
                // PID was recycled meanwhile, is minder's no more.
                live = parsed
                    .live
                    .into_iter()
                    .filter(|&(pid, start)| {
                        read_stat(Pid::from_raw(pid)).is_ok_and(|s| s.start == start)
                    })
                    .collect();
            }
        }
        let file = write_fresh(path, boot.as_deref(), &live)?;
        let lines = live.len() + usize::from(boot.is_some());
        Ok(Ledger {
            path: path.to_path_buf(),
            boot,
            state: Mutex::new(State {
                file,
                live,
                lines,
                stale: false,
                warned: false,
            }),
        })
    }

    /// The file this ledger writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records `pid`, a program process minder has just spawned (a session
    /// leader), with its start time. Call it while the process cannot have
    /// been reaped yet (from the spawn, before the reaper can route its
    /// exit), so that `pid` is surely minder's child. Never fails: a
    /// process already gone is not recorded, and a failed write is logged.
    pub fn record(&self, pid: Pid) {
        match read_stat(pid) {
            Ok(stat) => self.record_start(pid.as_raw(), stat.start),
            Err(e) => tracing::debug!(
                pid = pid.as_raw(),
                "not recorded in the process ledger: its start time could not be read: {e}"
            ),
        }
    }

    /// Removes `pid` from the live set (its process has ended). Nothing is
    /// written for a PID that is not recorded.
    pub fn forget(&self, pid: Pid) {
        let mut state = self.lock();
        let Some(start) = state.live.remove(&pid.as_raw()) else {
            return;
        };
        let line = format!("- {pid} {start}\n");
        self.append(&mut state, line.as_bytes());
    }

    /// The PIDs recorded and not forgotten, with their start times.
    pub fn live(&self) -> HashMap<i32, u64> {
        self.lock().live.clone()
    }

    fn record_start(&self, pid: i32, start: u64) {
        let mut state = self.lock();
        state.live.insert(pid, start);
        let line = format!("+ {pid} {start}\n");
        self.append(&mut state, line.as_bytes());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves the map sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one line (the live set already updated), or rewrites the
    /// file when it has grown or a write has failed.
    fn append(&self, state: &mut State, line: &[u8]) {
        if state.stale || state.lines + 1 > 2 * state.live.len() + COMPACT_SLACK {
            match write_fresh(&self.path, self.boot.as_deref(), &state.live) {
                Ok(file) => {
                    state.file = file;
                    state.lines = state.live.len() + usize::from(self.boot.is_some());
                    state.stale = false;
                    state.warned = false;
                }
                Err(e) => self.failed(state, &e),
            }
            return;
        }
        // One write(2): O_APPEND makes it land at the end whole, or not at
        // all but for a full disk, where a short write counts as a failure.
        match (&state.file).write(line) {
            Ok(n) if n == line.len() => {
                state.lines += 1;
                state.warned = false;
            }
            Ok(n) => self.failed(
                state,
                &io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write ({n} of {} bytes)", line.len()),
                ),
            ),
            Err(e) => self.failed(state, &e),
        }
    }

    fn failed(&self, state: &mut State, error: &io::Error) {
        state.stale = true;
        if !state.warned {
            state.warned = true;
            tracing::warn!(
                path = %self.path.display(),
                "cannot write the process ledger: {error}; if minder is killed now, \
                 a new minder may not find every process it leaves"
            );
        }
    }
}

/// A process a killed minder left, stopped by [`recover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The recorded main process: also the id of its process group and session.
    pub pid: Pid,
    /// Its command line (`/proc/PID/cmdline`), made safe to print and cut
    /// short; the command of the oldest member of its session if the main
    /// process itself had already exited.
    pub command: String,
    /// Whether it (or a process of its session) was still there after the
    /// grace period and needed SIGKILL.
    pub killed: bool,
    /// How many processes were found: the main process if it still ran,
    /// and the members of its session.
    pub processes: usize,
    /// Whether the main process itself was still running.
    pub leader_alive: bool,
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.leader_alive {
            write!(f, "process {} ({})", self.pid, self.command)?;
        } else {
            write!(f, "the session of process {} ({})", self.pid, self.command)?;
        }
        let others = self
            .processes
            .saturating_sub(usize::from(self.leader_alive));
        if others > 0 {
            write!(f, " with {others} more of its session")?;
        }
        if self.killed {
            write!(f, ": needed SIGKILL")
        } else {
            write!(f, ": stopped by SIGTERM")
        }
    }
}

/// Stops the processes a killed minder left, as its ledger at `path` names
/// them, then removes the file: call it on a fresh start, before the first
/// program is spawned and before [`Ledger::open`]. A missing file means
/// there is nothing to do.
///
/// Each group gets SIGTERM, then SIGKILL if anything of it is still there
/// after `grace`; see the module documentation for which processes are
/// stopped and which are never touched. The caller logs each returned
/// [`Leftover`] (its `Display` is the message); what this function alone
/// knows (lines that did not parse, a file cut at the bound, processes
/// that would not die) it logs itself.
///
/// `Err` only if the file exists and cannot be read, or is refused (a
/// symbolic link, another user's, not a regular file, hard-linked
/// elsewhere); nothing is signalled then, and the file is left in place
/// for the operator. Entries that could not be checked (no pidfds, no file
/// descriptor left) are logged and dropped with the file.
pub fn recover(path: &Path, grace: Duration) -> io::Result<Vec<Leftover>> {
    let Some(contents) = read_checked(path)? else {
        return Ok(Vec::new());
    };
    let parsed = parse(&contents.bytes, contents.truncated);
    parsed.log_problems(path);
    let boot = boot_id();
    let leftovers = if parsed.boot.is_some() && boot.is_some() && parsed.boot != boot {
        tracing::info!(
            path = %path.display(),
            "the process ledger is from an earlier boot: none of its processes can still run"
        );
        Vec::new()
    } else {
        stop_all(&parsed.live, grace)
    };
    // What was stopped is reported even if the file stays: `Ledger::open`
    // then drops the entries whose process is gone.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(
            path = %path.display(),
            "cannot remove the process ledger after recovery: {e}"
        ),
    }
    Ok(leftovers)
}

/// What was found of one entry, with a pidfd on each process.
struct Target {
    pid: Pid,
    /// The leader's pidfd, when it was found with the recorded start time.
    leader: Option<OwnedFd>,
    /// Members of the session other than the leader, each with its pidfd and
    /// whether a signal to the leader's group reaches it.
    members: Vec<(OwnedFd, bool)>,
    command: String,
    leader_alive: bool,
}

impl Target {
    fn fds(&self) -> impl Iterator<Item = &OwnedFd> {
        self.leader
            .iter()
            .chain(self.members.iter().map(|(fd, _)| fd))
    }

    /// Sends `sig` to the leader's group (through its pidfd), and to each
    /// member the group signal does not reach (or every one, when there was
    /// no group signal).
    fn signal(&self, sig: Signal) {
        let mut group_done = false;
        if let Some(leader) = &self.leader {
            match pidfd_send_signal(leader, sig, PIDFD_SIGNAL_PROCESS_GROUP) {
                Ok(()) | Err(Errno::ESRCH) => group_done = true,
                // A kernel without the flag (before 6.9): by number, while
                // the leader is alive and so holds it.
                Err(Errno::EINVAL) => {
                    if !exited(leader) {
                        group_done = nix::sys::signal::killpg(self.pid, sig).is_ok();
                    }
                    if !group_done {
                        let _ = pidfd_send_signal(leader, sig, 0);
                    }
                }
                Err(e) => tracing::warn!(
                    pid = self.pid.as_raw(),
                    "cannot send {sig} to a process group left by a previous minder: {e}"
                ),
            }
        }
        for (fd, in_group) in &self.members {
            if !(group_done && *in_group) {
                let _ = pidfd_send_signal(fd, sig, 0);
            }
        }
    }
}

fn stop_all(live: &HashMap<i32, u64>, grace: Duration) -> Vec<Leftover> {
    if live.is_empty() {
        return Vec::new();
    }
    let mut entries: Vec<(i32, u64)> = live.iter().map(|(&p, &s)| (p, s)).collect();
    entries.sort_unstable();
    let scan = Scan::new(scan_proc());
    let me = nix::unistd::getpid().as_raw();
    let my_group = nix::unistd::getpgrp().as_raw();
    let mut targets = Vec::new();
    let mut no_pidfd = 0usize;
    for (pid, start) in entries {
        if pid <= 1 || pid == me || pid == my_group {
            continue;
        }
        match find(pid, start, &scan, me) {
            Ok(Some(target)) => targets.push(target),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => no_pidfd += 1,
            Err(e) => tracing::warn!(
                pid,
                "cannot check a process left by a previous minder, left alone: {e}"
            ),
        }
    }
    if no_pidfd > 0 {
        tracing::warn!(
            "{no_pidfd} processes named in the process ledger are left alone: this kernel \
             has no pidfd_open (Linux 5.3), and by PID alone a recycled one could be hit"
        );
    }
    if targets.is_empty() {
        return Vec::new();
    }

    for target in &targets {
        target.signal(Signal::SIGTERM);
    }
    let fds: Vec<&OwnedFd> = targets.iter().flat_map(Target::fds).collect();
    let mut gone = vec![false; fds.len()];
    wait_for_exits(&fds, &mut gone, Instant::now() + grace);

    // Which targets still have a process, in the order of `fds`.
    let mut killed = Vec::with_capacity(targets.len());
    let mut index = 0;
    for target in &targets {
        let count = target.fds().count();
        killed.push(gone[index..index + count].iter().any(|g| !g));
        index += count;
    }
    for (target, &kill) in targets.iter().zip(&killed) {
        if kill {
            target.signal(Signal::SIGKILL);
        }
    }
    if killed.iter().any(|&k| k) {
        wait_for_exits(&fds, &mut gone, Instant::now() + KILL_WAIT);
        let left = gone.iter().filter(|g| !**g).count();
        if left > 0 {
            tracing::warn!(
                "{left} processes left by a previous minder are still there {} after SIGKILL",
                humantime::format_duration(KILL_WAIT)
            );
        }
    }
    targets
        .into_iter()
        .zip(killed)
        .map(|(target, killed)| Leftover {
            pid: target.pid,
            processes: target.members.len() + usize::from(target.leader_alive),
            command: target.command,
            killed,
            leader_alive: target.leader_alive,
        })
        .collect()
}

/// What is left of the entry (`pid`, `start`), with a pidfd on each of its
/// processes found alive; `None` if nothing (or a recycled PID).
fn find(pid: i32, start: u64, scan: &Scan, me: i32) -> io::Result<Option<Target>> {
    let leader_stat = scan.process(pid);
    let leader = match leader_stat {
        // Recycled: another process has the number, and its group is its own.
        Some(stat) if stat.start != start => return Ok(None),
        Some(_) => match pidfd_of(Pid::from_raw(pid))? {
            // Opened first, checked after: the pidfd is the recorded process.
            Some(fd) => match read_stat(Pid::from_raw(pid)) {
                Ok(now) if now.start == start => Some((fd, now)),
                _ => None,
            },
            // Exited since the scan.
            None => None,
        },
        None => None,
    };
    let mut members = Vec::new();
    let mut oldest: Option<(u64, Pid)> = None;
    for (member, stat) in scan.session(pid) {
        let in_session = stat.sid == pid && *member != pid && *member != me;
        // With the leader gone, only a member no older than it is its.
        if !in_session || stat.zombie || (leader.is_none() && stat.start < start) {
            continue;
        }
        let member_pid = Pid::from_raw(*member);
        let Some(fd) = pidfd_of(member_pid)? else {
            continue;
        };
        match read_stat(member_pid) {
            Ok(now) if now.start == stat.start && now.sid == pid => {
                if oldest.is_none_or(|(s, _)| now.start < s) {
                    oldest = Some((now.start, member_pid));
                }
                members.push((fd, now.pgid == pid));
            }
            _ => {}
        }
    }
    let leader_alive = leader.as_ref().is_some_and(|(_, s)| !s.zombie);
    if !leader_alive && members.is_empty() {
        return Ok(None);
    }
    let command = match (&leader, oldest) {
        (Some((_, stat)), _) if leader_alive => command_of(Pid::from_raw(pid), stat),
        (_, Some((_, member))) => match read_stat(member) {
            Ok(stat) => command_of(member, &stat),
            Err(_) => String::from("?"),
        },
        _ => String::from("?"),
    };
    Ok(Some(Target {
        pid: Pid::from_raw(pid),
        leader: leader.map(|(fd, _)| fd),
        members,
        command,
        leader_alive,
    }))
}

/// A pidfd on `pid`; `None` if it has exited, `Err` if pidfds cannot be
/// had (ENOSYS before Linux 5.3, EMFILE).
fn pidfd_of(pid: Pid) -> io::Result<Option<OwnedFd>> {
    match open_pidfd(pid) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the process of `pidfd` has exited (a pidfd is readable from then on).
fn exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
}

/// Waits until every pidfd of `fds` not yet marked in `gone` is readable,
/// or until `deadline`; marks those that became readable.
fn wait_for_exits(fds: &[&OwnedFd], gone: &mut [bool], deadline: Instant) {
    // Each round either sees at least one exit, times out at the deadline,
    // or was interrupted; the interruptions are bounded too.
    let mut interruptions = 0;
    for _ in 0..=fds.len() + 100 {
        let pending: Vec<usize> = (0..fds.len()).filter(|&i| !gone[i]).collect();
        if pending.is_empty() {
            return;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Rounded up, so a wait of less than a millisecond does not spin.
        let millis = remaining.as_micros().div_ceil(1000).min(i32::MAX as u128);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut polled: Vec<PollFd> = pending
            .iter()
            .map(|&i| PollFd::new(fds[i].as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut polled, timeout) {
            Ok(0) => return,
            Ok(_) => {
                for (slot, &i) in polled.iter().zip(&pending) {
                    if slot.revents().is_some_and(|r| !r.is_empty()) {
                        gone[i] = true;
                    }
                }
            }
            Err(Errno::EINTR) if interruptions < 100 => interruptions += 1,
            Err(e) => {
                tracing::warn!("cannot wait for processes left by a previous minder: {e}");
                return;
            }
        }
        if Instant::now() >= deadline {
            return;
        }
    }
}

/// The fields of `/proc/PID/stat` the ledger uses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stat {
    comm: String,
    zombie: bool,
    pgid: i32,
    sid: i32,
    /// Clock ticks after boot (field 22).
    start: u64,
}

fn read_stat(pid: Pid) -> io::Result<Stat> {
    let mut text = Vec::with_capacity(512);
    File::open(format!("/proc/{pid}/stat"))?
        .take(4096)
        .read_to_end(&mut text)?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat does not parse"),
        )
    })
}

/// Parses a `/proc/PID/stat` line. The command (field 2) is in parentheses
/// and may itself hold spaces and parentheses: the fields after it are
/// found after the last `)`.
fn parse_stat(text: &[u8]) -> Option<Stat> {
    let open = memchr::memchr(b'(', text)?;
    let close = memchr::memrchr(b')', text)?;
    if close < open {
        return None;
    }
    let comm = String::from_utf8_lossy(&text[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    Some(Stat {
        comm,
        zombie: matches!(*fields.first()?, "Z" | "X"),
        pgid: fields.get(2)?.parse().ok()?,
        sid: fields.get(3)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
    })
}

/// The processes of one scan of `/proc`, by PID and by session.
struct Scan {
    processes: Vec<(i32, Stat)>,
    by_pid: HashMap<i32, usize>,
    by_session: HashMap<i32, Vec<usize>>,
}

impl Scan {
    fn new(processes: Vec<(i32, Stat)>) -> Scan {
        let mut by_pid = HashMap::with_capacity(processes.len());
        let mut by_session: HashMap<i32, Vec<usize>> = HashMap::new();
        for (i, (pid, stat)) in processes.iter().enumerate() {
            by_pid.insert(*pid, i);
            by_session.entry(stat.sid).or_default().push(i);
        }
        Scan {
            processes,
            by_pid,
            by_session,
        }
    }

    fn process(&self, pid: i32) -> Option<&Stat> {
        self.by_pid.get(&pid).map(|&i| &self.processes[i].1)
    }

    fn session(&self, sid: i32) -> impl Iterator<Item = &(i32, Stat)> {
        self.by_session
            .get(&sid)
            .into_iter()
            .flatten()
            .map(|&i| &self.processes[i])
    }
}

/// Every process in `/proc` whose stat could be read, in one pass.
fn scan_proc() -> Vec<(i32, Stat)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.take(MAX_PROC_SCAN).flatten() {
        let name = entry.file_name();
        let Some(pid) = std::str::from_utf8(name.as_bytes())
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
            .filter(|&p| p > 0)
        else {
            continue;
        };
        if let Ok(stat) = read_stat(Pid::from_raw(pid)) {
            found.push((pid, stat));
        }
    }
    found
}

/// The command line of `pid` for a log line: arguments joined by spaces,
/// control characters escaped, cut to [`MAX_COMMAND_CHARS`]; the command
/// name of its stat for a process without one (a kernel thread, a zombie).
fn command_of(pid: Pid, stat: &Stat) -> String {
    let mut raw = Vec::new();
    let read =
        File::open(format!("/proc/{pid}/cmdline")).and_then(|f| f.take(4096).read_to_end(&mut raw));
    while raw.last() == Some(&0) {
        raw.pop();
    }
    let text = if read.is_err() || raw.is_empty() {
        format!("[{}]", stat.comm)
    } else {
        for byte in &mut raw {
            if *byte == 0 {
                *byte = b' ';
            }
        }
        String::from_utf8_lossy(&raw).into_owned()
    };
    let safe = crate::text::sanitize(&text);
    if safe.chars().count() > MAX_COMMAND_CHARS {
        let mut cut: String = safe.chars().take(MAX_COMMAND_CHARS).collect();
        cut.push('…');
        cut
    } else {
        safe.into_owned()
    }
}

/// This boot's id, which the start times are relative to.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()))
        .then(|| id.to_string())
}

struct Contents {
    bytes: Vec<u8>,
    /// The file was longer than [`MAX_FILE_BYTES`].
    truncated: bool,
}

/// Reads the ledger at `path`, bounded; `None` if there is none. Refuses a
/// symbolic link, a file that is not regular, has other links, or is not
/// owned by minder's user.
fn read_checked(path: &Path) -> io::Result<Option<Contents>> {
    let file = match OpenOptions::new()
        .read(true)
        // O_NONBLOCK: a FIFO put there does not hang the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused(path, "it is a symbolic link"));
        }
        Err(e) => return Err(annotate(path, "cannot open", e)),
    };
    check_owned(path, &file)?;
    let mut bytes = Vec::new();
    (&file)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| annotate(path, "cannot read", e))?;
    let truncated = bytes.len() as u64 > MAX_FILE_BYTES;
    bytes.truncate(MAX_FILE_BYTES as usize);
    Ok(Some(Contents { bytes, truncated }))
}

fn check_owned(path: &Path, file: &File) -> io::Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| annotate(path, "cannot stat", e))?;
    if !meta.file_type().is_file() {
        return Err(refused(path, "it is not a regular file"));
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(refused(
            path,
            &format!(
                "it is owned by uid {}, not by minder's uid {uid}",
                meta.uid()
            ),
        ));
    }
    if meta.nlink() > 1 {
        return Err(refused(
            path,
            &format!("it has {} hard links (one expected)", meta.nlink()),
        ));
    }
    Ok(())
}

fn refused(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("refusing the process ledger {}: {why}", path.display()),
    )
}

fn annotate(path: &Path, what: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("{what} the process ledger {}: {e}", path.display()),
    )
}

/// Writes the ledger afresh (a `boot` line, then one `+` line per live
/// entry) into a temporary file renamed over `path`; returns it open for
/// appending. The temporary file is created 0600 with `O_EXCL`, which
/// follows no symbolic link.
fn write_fresh(path: &Path, boot: Option<&str>, live: &HashMap<i32, u64>) -> io::Result<File> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(annotate(&tmp, "cannot remove", e)),
    }
    let file = OpenOptions::new()
        .append(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| annotate(&tmp, "cannot create", e))?;
    let mut text = String::with_capacity(48 + live.len() * 20);
    if let Some(boot) = boot {
        text.push_str("boot ");
        text.push_str(boot);
        text.push('\n');
    }
    let mut entries: Vec<_> = live.iter().collect();
    entries.sort_unstable();
    for (pid, start) in entries {
        text.push_str(&format!("+ {pid} {start}\n"));
    }
    let written = (&file)
        .write_all(text.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(annotate(path, "cannot write", e));
    }
    Ok(file)
}

/// A ledger file, read.
#[derive(Debug, Default)]
struct Parsed {
    boot: Option<String>,
    live: HashMap<i32, u64>,
    malformed: usize,
    /// Lines (or bytes) past the bound were not read.
    truncated: bool,
}

impl Parsed {
    fn log_problems(&self, path: &Path) {
        if self.malformed > 0 {
            tracing::warn!(
                path = %path.display(),
                "{} lines of the process ledger do not parse and are skipped",
                self.malformed
            );
        }
        if self.truncated {
            tracing::warn!(
                path = %path.display(),
                "the process ledger is longer than {MAX_FILE_BYTES} bytes or \
                 {MAX_FILE_LINES} lines; the rest is not read"
            );
        }
    }
}

/// Replays the lines of a ledger: `+` adds (or replaces) an entry, `-`
/// removes it if its start time matches. A PID below 2 is never an entry.
fn parse(bytes: &[u8], truncated: bool) -> Parsed {
    let mut parsed = Parsed {
        truncated,
        ..Parsed::default()
    };
    let mut lines = bytes.split(|&b| b == b'\n').peekable();
    let mut count = 0;
    while let Some(line) = lines.next() {
        if lines.peek().is_none() && line.is_empty() {
            break;
        }
        if count == MAX_FILE_LINES {
            parsed.truncated = true;
            break;
        }
        count += 1;
        // A last line without its newline (a write cut short, or the read
        // bound) is not trusted.
        if lines.peek().is_none() {
            parsed.malformed += 1;
            break;
        }
        let Some(text) = std::str::from_utf8(line).ok() else {
            parsed.malformed += 1;
            continue;
        };
        let fields: Vec<&str> = text.split(' ').collect();
        match fields.as_slice() {
            ["boot", id] if count == 1 && !id.is_empty() => parsed.boot = Some(id.to_string()),
            [op @ ("+" | "-"), pid, start] => {
                let (Ok(pid), Ok(start)) = (pid.parse::<i32>(), start.parse::<u64>()) else {
                    parsed.malformed += 1;
                    continue;
                };
                if pid < 2 {
                    parsed.malformed += 1;
                } else if *op == "+" {
                    parsed.live.insert(pid, start);
                } else if parsed.live.get(&pid) == Some(&start) {
                    parsed.live.remove(&pid);
                }
            }
            _ => parsed.malformed += 1,
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    use std::process::{Child, Command, Stdio};

    /// A program process as minder makes it: `sh -c script` in a session
    /// (and group) of its own, so its PID is the group's id. The script
    /// says `ready` once it has set itself up; this returns after that.
    fn spawn_session(script: &str) -> (Child, Pid) {
        let mut command = Command::new("sh");
        command.args(["-c", script]).stdout(Stdio::piped());
        // SAFETY: between fork and exec the closure only calls setsid(2),
        // which is async-signal-safe and allocates nothing.
        unsafe {
            command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(io::Error::from));
        }
        let mut child = command.spawn().expect("spawning sh");
        let mut line = String::new();
        io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading from sh");
        assert_eq!(line.trim(), "ready", "the script did not start");
        let pid = Pid::from_raw(child.id() as i32);
        (child, pid)
    }

    /// The processes (PID, start time) of the session `sid`, zombies aside.
    fn session(sid: Pid) -> Vec<(Pid, u64)> {
        scan_proc()
            .into_iter()
            .filter(|(_, s)| s.sid == sid.as_raw() && !s.zombie)
            .map(|(p, s)| (Pid::from_raw(p), s.start))
            .collect()
    }

    /// Whether the process that had `pid` and `start` still runs (a zombie
    /// does not).
    fn runs(pid: Pid, start: u64) -> bool {
        read_stat(pid).is_ok_and(|s| s.start == start && !s.zombie)
    }

    /// Waits, for at most 10 s, until `condition` holds; whether it did.
    fn eventually(mut condition: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if condition() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills what is left of a test's child and reaps it.
    fn finish(mut child: Child) {
        let _ = child.kill();
        let _ = child.wait();
    }

    fn start_of(pid: Pid) -> u64 {
        read_stat(pid).expect("reading the start time").start
    }

    #[test]
    fn the_ledger_is_named_after_the_socket() {
        assert_eq!(
            ledger_path(Path::new("/run/minder/minder.sock")),
            PathBuf::from("/run/minder/minder.sock.pids")
        );
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_parses() {
        let mut line =
            b"4242 (a) (b c)) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 ".to_vec();
        line.extend_from_slice(
            b"8812345 2412544 229 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 0\n",
        );
        let stat = parse_stat(&line).expect("parses");
        assert_eq!(stat.comm, "a) (b c)");
        assert_eq!((stat.pgid, stat.sid, stat.start), (4242, 4242, 8812345));
        assert!(!stat.zombie);
        assert_eq!(parse_stat(b"12 (x) Z 1"), None);
        assert_eq!(parse_stat(b"no parentheses"), None);
        assert_eq!(parse_stat(b") backwards ("), None);
    }

    #[test]
    fn recover_stops_every_process_of_the_recorded_sessions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let script = "sleep 30 & sleep 30 & echo ready; wait";
        let (first, first_pid) = spawn_session(script);
        let (second, second_pid) = spawn_session(script);
        let ledger = Ledger::open(&path).expect("opening the ledger");
        ledger.record(first_pid);
        ledger.record(second_pid);
        // minder is killed: nothing but the file is left.
        drop(ledger);
        let mut processes = session(first_pid);
        processes.extend(session(second_pid));
        assert_eq!(processes.len(), 6, "{processes:?}");

        let mut leftovers = recover(&path, Duration::from_secs(5)).expect("recovering");
        leftovers.sort_by_key(|l| l.pid);
        let gone = eventually(|| processes.iter().all(|&(p, s)| !runs(p, s)));
        finish(first);
        finish(second);
        assert!(gone, "processes of the sessions are left");
        let mut expected = [first_pid, second_pid];
        expected.sort();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
        for (leftover, pid) in leftovers.iter().zip(expected) {
            assert_eq!(leftover.pid, pid);
            assert!(!leftover.killed, "{leftover}");
            assert!(leftover.leader_alive, "{leftover}");
            assert_eq!(leftover.processes, 3, "{leftover}");
            assert_eq!(leftover.command, format!("sh -c {script}"));
            let shown = leftover.to_string();
            assert!(shown.contains("with 2 more of its session"), "{shown}");
            assert!(shown.ends_with("stopped by SIGTERM"), "{shown}");
        }
        assert!(!path.exists(), "the ledger is removed");
        // A second recovery has nothing to do.
        assert_eq!(recover(&path, Duration::ZERO).expect("again"), Vec::new());
    }

    #[test]
    fn a_process_ignoring_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        // The sleep inherits the ignored SIGTERM.
        let (child, pid) = spawn_session("trap '' TERM; sleep 30 & echo ready; wait");
        let processes = session(pid);
        let ledger = Ledger::open(&path).expect("opening the ledger");
        ledger.record(pid);
        drop(ledger);

        let grace = Duration::from_millis(300);
        let started = Instant::now();
        let leftovers = recover(&path, grace).expect("recovering");
        let took = started.elapsed();
        let gone = eventually(|| processes.iter().all(|&(p, s)| !runs(p, s)));
        finish(child);
        assert!(gone, "processes of the session are left");
        assert!(took >= grace, "SIGKILL came after {took:?}");
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        assert!(leftovers[0].killed, "{}", leftovers[0]);
        assert!(leftovers[0].to_string().ends_with("needed SIGKILL"));
    }

    #[test]
    fn the_members_of_a_session_whose_leader_died_are_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let (mut child, pid) = spawn_session("sleep 30 & sleep 30 & echo ready; wait");
        let ledger = Ledger::open(&path).expect("opening the ledger");
        ledger.record(pid);
        drop(ledger);
        // The shell alone dies (and is reaped) while no minder runs; its
        // sleeps live on in its session.
        child.kill().expect("killing sh");
        child.wait().expect("reaping sh");
        // Forked before `ready`, but perhaps not yet `sleep`.
        let sleeping = eventually(|| {
            scan_proc()
                .iter()
                .filter(|(_, s)| s.sid == pid.as_raw() && s.comm == "sleep")
                .count()
                == 2
        });
        let members = session(pid);
        assert_eq!(members.len(), 2, "{members:?}");

        let leftovers = recover(&path, Duration::from_secs(5)).expect("recovering");
        let gone = eventually(|| members.iter().all(|&(p, s)| !runs(p, s)));
        if !gone {
            for &(p, _) in &members {
                let _ = nix::sys::signal::kill(p, Signal::SIGKILL);
            }
        }
        assert!(gone, "the members are left");
        assert!(sleeping, "{members:?}");
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
        let leftover = &leftovers[0];
        assert_eq!(leftover.pid, pid);
        assert!(!leftover.leader_alive && !leftover.killed, "{leftover}");
        assert_eq!(leftover.processes, 2);
        assert_eq!(leftover.command, "sleep 30");
        assert!(leftover.to_string().starts_with("the session of process"));
    }

    #[test]
    fn a_recycled_pid_is_not_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let (child, pid) = spawn_session("echo ready; exec sleep 30");
        let start = start_of(pid);
        // The entry has the right PID but another start time: the process
        // now holding the number is not the one recorded.
        let boot = boot_id().map(|b| format!("boot {b}\n")).unwrap_or_default();
        std::fs::write(&path, format!("{boot}+ {pid} {}\n", start + 1)).expect("writing");
        let leftovers = recover(&path, Duration::from_millis(100)).expect("recovering");
        let still = runs(pid, start);
        finish(child);
        assert_eq!(leftovers, Vec::new());
        assert!(still, "a process whose start time differs was stopped");
        assert!(!path.exists());
    }

    #[test]
    fn entries_of_another_boot_are_not_touched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let (child, pid) = spawn_session("echo ready; exec sleep 30");
        let start = start_of(pid);
        let text = format!("boot 00000000-0000-0000-0000-000000000000\n+ {pid} {start}\n");
        std::fs::write(&path, &text).expect("writing");
        let opened = Ledger::open(&path).map(|l| l.live());
        std::fs::write(&path, &text).expect("writing");
        let leftovers = recover(&path, Duration::from_millis(100)).expect("recovering");
        let still = runs(pid, start);
        finish(child);
        if boot_id().is_none() {
            return; // No boot id on this host: nothing to tell boots apart.
        }
        assert_eq!(opened.expect("opening"), HashMap::new());
        assert_eq!(leftovers, Vec::new());
        assert!(still);
    }

    #[test]
    fn open_after_a_reexec_replays_additions_and_removals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let children: Vec<(Child, Pid)> = (0..3)
            .map(|_| spawn_session("echo ready; exec sleep 30"))
            .collect();
        let (ended, ended_pid) = spawn_session("echo ready; exec sleep 30");
        let ledger = Ledger::open(&path).expect("opening the ledger");
        for (_, pid) in &children {
            ledger.record(*pid);
        }
        ledger.record(ended_pid);
        ledger.forget(children[1].1);
        // One that ends while minder re-executes (its exit not yet routed).
        finish(ended);
        drop(ledger);

        let reopened = Ledger::open(&path).expect("reopening the ledger");
        let expected: HashMap<i32, u64> = [children[0].1, children[2].1]
            .into_iter()
            .map(|pid| (pid.as_raw(), start_of(pid)))
            .collect();
        assert_eq!(reopened.live(), expected);
        // It carries on appending, and the file says what memory says.
        reopened.forget(children[0].1);
        reopened.record(children[1].1);
        let on_disk = parse(&std::fs::read(&path).expect("reading"), false);
        let live = reopened.live();
        for (child, _) in children {
            finish(child);
        }
        assert_eq!(on_disk.malformed, 0);
        assert_eq!(on_disk.live, live);
        assert_eq!(on_disk.boot, boot_id());
        assert_eq!(live.len(), 2);
        let mode = std::fs::metadata(&path).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn compaction_keeps_the_live_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let ledger = Ledger::open(&path).expect("opening the ledger");
        let mut expected = HashMap::new();
        for round in 0..20u64 {
            for i in 0..100 {
                let pid = 100_000 + i;
                ledger.record_start(pid, round);
                expected.insert(pid, round);
            }
            for i in (0..100).step_by(3) {
                ledger.forget(Pid::from_raw(100_000 + i));
                expected.remove(&(100_000 + i));
            }
            let text = std::fs::read(&path).expect("reading");
            let lines = text.iter().filter(|&&b| b == b'\n').count();
            assert!(
                lines <= 2 * expected.len() + COMPACT_SLACK + 1,
                "{lines} lines for {} entries",
                expected.len()
            );
            let parsed = parse(&text, false);
            assert_eq!(parsed.malformed, 0);
            assert_eq!(parsed.live, expected, "round {round}");
        }
        assert_eq!(ledger.live(), expected);
        assert!(!dir.path().join("minder.sock.pids.tmp").exists());
    }

    #[test]
    fn a_failed_write_is_made_good_by_the_next_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let ledger = Ledger::open(&path).expect("opening the ledger");
        ledger.record_start(1000, 1);
        // The disk fills up: the append fails with ENOSPC.
        ledger.lock().file = OpenOptions::new()
            .append(true)
            .open("/dev/full")
            .expect("opening /dev/full");
        ledger.record_start(1001, 2);
        {
            let state = ledger.lock();
            assert!(state.stale && state.warned);
        }
        let on_disk = parse(&std::fs::read(&path).expect("reading"), false);
        assert_eq!(on_disk.live, HashMap::from([(1000, 1)]));
        // Room again: the next call writes everything, the lost line included.
        ledger.record_start(1002, 3);
        let on_disk = parse(&std::fs::read(&path).expect("reading"), false);
        assert_eq!(
            on_disk.live,
            HashMap::from([(1000, 1), (1001, 2), (1002, 3)])
        );
        {
            let state = ledger.lock();
            assert!(!state.stale && !state.warned);
        }
        ledger.forget(Pid::from_raw(1000));
        let on_disk = parse(&std::fs::read(&path).expect("reading"), false);
        assert_eq!(on_disk.live, HashMap::from([(1001, 2), (1002, 3)]));
        let lines = ledger.lock().lines;
        // Forgetting what is not recorded writes nothing.
        ledger.forget(Pid::from_raw(4242));
        assert_eq!(ledger.lock().lines, lines);
    }

    #[test]
    fn recording_is_cheap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let ledger = Ledger::open(&path).expect("opening the ledger");
        let me = nix::unistd::getpid();
        let started = Instant::now();
        for _ in 0..1000 {
            ledger.record(me);
            ledger.forget(me);
        }
        let each = started.elapsed() / 2000;
        // Well under a millisecond even unoptimised on a busy machine.
        assert!(each < Duration::from_millis(1), "{each:?} a call");
    }

    #[test]
    fn a_malformed_file_is_skipped_line_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let mut text = b"+ 1 5\n+ 0 1\n+ -7 3\n- x y\n+ 12\n+ 12 3 4\n\xff\xfe\n\n".to_vec();
        text.extend_from_slice(&[b'9'; 5000]);
        text.extend_from_slice(b"\nboot late\n+ 4000000000 1\n+ 77 18446744073709551616\n+ 5 6");
        let parsed = parse(&text, false);
        assert_eq!(parsed.live, HashMap::new());
        assert_eq!(parsed.malformed, 13);
        assert_eq!(parsed.boot, None);
        std::fs::write(&path, &text).expect("writing");
        assert_eq!(
            recover(&path, Duration::ZERO).expect("recovering"),
            Vec::new()
        );
        std::fs::write(&path, &text).expect("writing");
        let ledger = Ledger::open(&path).expect("opening");
        assert_eq!(ledger.live(), HashMap::new());
    }

    #[test]
    fn a_huge_file_is_read_up_to_the_bound() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        let line = "+ 999999 1\n- 999999 1\n";
        std::fs::write(&path, line.repeat(200_000)).expect("writing");
        let contents = read_checked(&path).expect("reading").expect("a file");
        assert!(contents.truncated);
        assert_eq!(contents.bytes.len() as u64, MAX_FILE_BYTES);
        let parsed = parse(&contents.bytes, contents.truncated);
        assert!(parsed.truncated);
        assert_eq!(
            recover(&path, Duration::ZERO).expect("recovering"),
            Vec::new()
        );
    }

    #[test]
    fn a_symbolic_link_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, "+ 5 6\n").expect("writing");
        let path = dir.path().join("minder.sock.pids");
        std::os::unix::fs::symlink(&target, &path).expect("symlink");
        let err = Ledger::open(&path).expect_err("a symlink is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let err = recover(&path, Duration::ZERO).expect_err("a symlink is refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&target).expect("reading"),
            "+ 5 6\n"
        );
        assert!(path.is_symlink(), "the link is left for the operator");
    }

    #[test]
    fn a_hard_link_or_another_users_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("minder.sock.pids");
        std::fs::write(&path, "").expect("writing");
        let other = dir.path().join("other");
        std::fs::hard_link(&path, &other).expect("hard link");
        let err = Ledger::open(&path).expect_err("a hard link is refused");
        assert!(err.to_string().contains("hard links"), "{err}");
        std::fs::remove_file(&other).expect("removing");
        if !nix::unistd::geteuid().is_root() {
            return; // Only root can give a file away.
        }
        nix::unistd::chown(&path, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let err = recover(&path, Duration::ZERO).expect_err("another user's file is refused");
        assert!(err.to_string().contains("owned by uid 65534"), "{err}");
        assert!(path.exists(), "a refused file is left in place");
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_bytes_does_not_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let parsed = parse(&bytes, false);
            proptest::prop_assert!(parsed.live.keys().all(|&p| p >= 2));
        }
    }
}
