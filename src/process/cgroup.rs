//! Containment in cgroup v2: each program process in a cgroup of its own,
//! so that a stop reaches every descendant (`cgroup.kill`), "stopped" means
//! the cgroup is empty (`cgroup.events`), and processes a killed minder left
//! behind are found again by the next one.
//!
//! The layout, under the cgroup minder was started in (`START`):
//!
//! ```text
//! START/minder-<socket>/              this minder's subtree (named after its control socket)
//!     :supervisor/                    minder itself (and its hooks and exec probes)
//!     <program>/<instance>/           one process and its descendants
//!     <program>/<instance>.1/         its successor during a rolling restart
//! ```
//!
//! minder moves itself into a leaf because a cgroup with children may hold
//! no processes once controllers are enabled below it (the "no internal
//! processes" rule of cgroup v2), and `cgroup.kill` on a program must never
//! reach minder. The subtree is named after the control socket because that
//! is what makes a minder "the same one" across a crash: two daemons never
//! share a socket, and a new daemon on the same config finds its
//! predecessor's cgroups where it would make its own.

use std::ffi::OsStr;
use std::fmt;
use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::ProcessEnd;
use crate::config::Resources;

/// The leaf minder's own process moves into.
/// Named with a `:`, which no program name has: a program may be called
/// `supervisor`.
const SUPERVISOR_LEAF: &str = ":supervisor";

/// Controllers minder enables for its programs where the host offers them:
/// what the limits of SPEC §5.3 need, and `memory.current` for `status`.
const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];

/// How many cgroups of one instance may coexist: the process and the
/// successor of a rolling restart, and a few left by processes that could
/// not be killed yet (stuck in an uninterruptible sleep).
const MAX_GENERATIONS: usize = 8;

/// How long minder waits for a killed cgroup to empty before it says so in
/// the log (it keeps waiting: a process in uninterruptible sleep dies late).
const SLOW_EMPTY: Duration = Duration::from_secs(5);

/// Why minder runs without cgroups; said once at start.
#[derive(Debug)]
pub enum Off {
    /// Every program has `cgroup = false`.
    NotWanted,
    /// No cgroup2 file system in /proc/self/mountinfo.
    NoHierarchy,
    /// minder's own cgroup could not be read.
    Unknown(io::Error),
    /// The kernel has no `cgroup.kill` (before Linux 5.14).
    NoKill,
    /// Spawning into a cgroup (`clone3`) is not implemented for this architecture.
    Architecture,
    /// minder may not make its subtree, or move itself into it.
    Denied(PathBuf, io::Error),
}

impl fmt::Display for Off {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Off::NotWanted => f.write_str("every program has cgroup = false"),
            Off::NoHierarchy => f.write_str("no cgroup v2 file system is mounted"),
            Off::Unknown(e) => write!(f, "reading /proc/self/cgroup: {}", plain(e)),
            Off::NoKill => f.write_str("the kernel has no cgroup.kill (Linux 5.14 or later)"),
            Off::Architecture => {
                f.write_str("spawning into a cgroup is not supported on this architecture")
            }
            Off::Denied(path, e) => write!(f, "{}: {}", path.display(), plain(e)),
        }
    }
}

/// This minder's cgroup subtree.
#[derive(Debug)]
pub struct Tree {
    /// `START/minder-<socket>`, shared by every [`Cgroup`] below it.
    base: Arc<Path>,
    /// The cgroup minder was started in, where it goes back at shutdown so
    /// that its subtree can be removed.
    start: PathBuf,
}

impl Tree {
    /// Finds (after `reexec`, minder is in it already) or makes this minder's subtree
    /// for the control socket `socket`. Does not move minder yet: processes
    /// a predecessor left are to be stopped first ([`Tree::leftovers`]),
    /// then [`Tree::enter`].
    pub fn open(socket: &Path) -> Result<Tree, Off> {
        if !CAN_SPAWN_INTO_CGROUP {
            return Err(Off::Architecture);
        }
        let mount = mount_point()
            .map_err(Off::Unknown)?
            .ok_or(Off::NoHierarchy)?;
        let own = own_cgroup(&mount).map_err(Off::Unknown)?;
        let name = subtree_name(socket);
        // After `reexec` (or any restart from inside the subtree) minder is
        // already in its leaf.
        let inside = own.file_name() == Some(OsStr::new(SUPERVISOR_LEAF))
            && own
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|n| n == OsStr::new(&name));
        let (base, start) = if inside {
            let base = own.parent().map(Path::to_path_buf).unwrap_or(own.clone());
            let start = base.parent().map(Path::to_path_buf).unwrap_or(mount);
            (base, start)
        } else {
            (own.join(&name), own)
        };
        make_dir(&base).map_err(|e| Off::Denied(base.clone(), e))?;
        if !base.join("cgroup.kill").exists() {
            return Err(Off::NoKill);
        }
        Ok(Tree {
            base: Arc::from(base),
            start,
        })
    }

    /// The directory of this minder's subtree.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Moves minder into its leaf, and enables the controllers the host
    /// offers for the programs' cgroups.
    pub fn enter(&self) -> Result<(), Off> {
        let leaf = self.base.join(SUPERVISOR_LEAF);
        make_dir(&leaf).map_err(|e| Off::Denied(leaf.clone(), e))?;
        // "0": the writing process, every thread of it.
        write_file(&leaf.join("cgroup.procs"), "0")
            .map_err(|e| Off::Denied(leaf.join("cgroup.procs"), e))?;
        // Where minder was started may have more processes than minder (a
        // shell's session): enabling controllers there then fails, and the
        // limits that need them are spawn errors that say so.
        enable_controllers(&self.start);
        enable_controllers(&self.base);
        Ok(())
    }

    /// Where the processes of `program`'s instance `instance` get their
    /// cgroup ([`Tree::create`]). Made once per process, with its other
    /// long-lived allocations, rather than at each spawn among the spawn's
    /// temporaries, where a thousand small lasting allocations would pin
    /// pages of freed ones.
    pub fn home(&self, program: &str, instance: u32) -> Cgroup {
        self.cgroup(&format!("{program}/{instance}"))
    }

    /// The cgroup `name` (`web/0`) below the subtree.
    fn cgroup(&self, name: &str) -> Cgroup {
        Cgroup {
            base: Arc::clone(&self.base),
            name: Arc::from(name),
        }
    }

    /// Makes the cgroup of a new process whose [`Tree::home`] is `home`,
    /// with the limits of `resources` written before anything runs in it:
    /// `home` itself, unless a predecessor (a rolling restart) or a process
    /// still dying holds it.
    pub fn create(
        &self,
        home: &Cgroup,
        resources: Option<&Resources>,
    ) -> Result<Cgroup, CgroupError> {
        // The common case allocates only paths for the system calls: `home`,
        // free, in the program's directory, which exists from the program's
        // first process on.
        let home_path = home.path();
        let group = home_path.parent().unwrap_or(&self.base);
        for generation in 0..MAX_GENERATIONS {
            let cgroup = match generation {
                0 => home.clone(),
                n => self.cgroup(&format!("{}.{n}", home.name)),
            };
            let path = cgroup.path();
            let mut made = std::fs::create_dir(&path);
            if made
                .as_ref()
                .is_err_and(|e| e.kind() == ErrorKind::NotFound)
            {
                match std::fs::create_dir(group) {
                    Ok(()) => enable_controllers(group),
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(CgroupError::Create(group.to_path_buf(), e)),
                }
                made = std::fs::create_dir(&path);
            }
            match made {
                Ok(()) => {}
                // Taken: the predecessor of a rolling restart, or a process
                // still dying. An empty one is a leftover and is made anew.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if cgroup.populated().unwrap_or(true)
                        || !cgroup.remove_quietly()
                        || std::fs::create_dir(&path).is_err()
                    {
                        continue;
                    }
                }
                Err(e) => return Err(CgroupError::Create(path, e)),
            }
            if let Err(e) = resources.map_or(Ok(()), |r| cgroup.limit(r)) {
                cgroup.remove();
                return Err(e);
            }
            return Ok(cgroup);
        }
        Err(CgroupError::Create(
            group.to_path_buf(),
            io::Error::new(
                ErrorKind::AlreadyExists,
                format!("{MAX_GENERATIONS} cgroups of this instance are still populated"),
            ),
        ))
    }

    /// The cgroup of process `pid` if it is one of this subtree's program
    /// cgroups (a process kept across `reexec`).
    pub fn of_process(&self, pid: Pid) -> Option<Cgroup> {
        let mount = mount_point().ok()??;
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let relative = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let path = mount.join(relative.trim_start_matches('/'));
        let inside = path.strip_prefix(&self.base).ok()?;
        (inside.components().count() == 2).then(|| self.cgroup(&inside.to_string_lossy()))
    }

    /// Every populated cgroup of the subtree: what a predecessor that died
    /// left running. Call before [`Tree::enter`].
    pub fn leftovers(&self) -> Vec<Leftover> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return found;
        };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            let program = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if program == SUPERVISOR_LEAF {
                found.push(Leftover::of(self.cgroup(SUPERVISOR_LEAF), None));
                continue;
            }
            let Ok(leaves) = std::fs::read_dir(&path) else {
                continue;
            };
            for leaf in leaves.flatten().filter(|e| e.path().is_dir()) {
                let name = format!("{program}/{}", leaf.file_name().to_string_lossy());
                found.push(Leftover::of(self.cgroup(&name), Some(program.clone())));
            }
        }
        found
    }

    /// Removes the directory of `program`, which left the config, once its
    /// last process is gone (it stays while another instance has a cgroup).
    pub fn remove_program(&self, program: &str) {
        match std::fs::remove_dir(self.base.join(program)) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOTEMPTY | libc::EBUSY | libc::ENOENT)
                ) => {}
            Err(e) => tracing::warn!("removing the cgroup of {program}: {e}"),
        }
    }

    /// Removes every empty cgroup below the subtree but minder's own leaf
    /// (after stopping a predecessor's leftovers, and at shutdown): nothing
    /// is left behind.
    pub fn prune(&self) {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return;
        };
        for entry in entries.flatten().filter(|e| e.path().is_dir()) {
            if entry.file_name() == OsStr::new(SUPERVISOR_LEAF) {
                continue;
            }
            let path = entry.path();
            if let Ok(leaves) = std::fs::read_dir(&path) {
                for leaf in leaves.flatten().filter(|e| e.path().is_dir()) {
                    let _ = std::fs::remove_dir(leaf.path());
                }
            }
            let _ = std::fs::remove_dir(&path);
        }
    }

    /// At the end of a shutdown: minder goes back where it was started and
    /// removes its subtree. Every process has been stopped by then; a
    /// cgroup that is not empty all the same (a process minder no longer
    /// watched) is killed and waited for, within `bound`, and named in the
    /// log: nothing minder started outlives it.
    pub async fn leave(&self, bound: Duration) {
        let left: Vec<Leftover> = self
            .leftovers()
            .into_iter()
            .filter(|l| l.program.is_some() && l.cgroup.populated().unwrap_or(false))
            .collect();
        for leftover in &left {
            tracing::warn!(
                "cgroup {} still holds {:?} at shutdown: killed",
                leftover.cgroup.path().display(),
                leftover.pids
            );
            leftover.cgroup.kill();
        }
        let emptied = async {
            for leftover in &left {
                leftover.cgroup.emptied().await;
            }
        };
        if tokio::time::timeout(bound, emptied).await.is_err() {
            tracing::error!("cgroups still populated after their kill at shutdown");
        }
        self.prune();
        if let Err(e) = write_file(&self.start.join("cgroup.procs"), "0") {
            // Under systemd, the unit's cgroup may have controllers enabled
            // for its children and so takes no process: systemd removes the
            // subtree when the unit stops.
            tracing::debug!("moving back to {}: {e}", self.start.display());
            return;
        }
        let _ = std::fs::remove_dir(self.base.join(SUPERVISOR_LEAF));
        if let Err(e) = std::fs::remove_dir(&self.base) {
            tracing::debug!("removing {}: {e}", self.base.display());
        }
    }
}

/// A cgroup a predecessor left, and what was found in it.
#[derive(Debug)]
pub struct Leftover {
    /// The cgroup (possibly empty: then it is only removed).
    pub cgroup: Cgroup,
    /// Its program, by the directory name (`None` for minder's own leaf).
    pub program: Option<String>,
    /// The processes in it when it was found.
    pub pids: Vec<Pid>,
}

impl Leftover {
    /// `cgroup`, with the processes in it now.
    fn of(cgroup: Cgroup, program: Option<String>) -> Leftover {
        let pids = cgroup.pids();
        Leftover {
            cgroup,
            program,
            pids,
        }
    }

    /// Stops what is in it: `signal` to every process, then `cgroup.kill`
    /// after `grace`; returns once it is empty and removed, and whether the
    /// kill was needed.
    pub async fn stop(self, signal: Signal, grace: Duration) -> bool {
        if self.pids.is_empty() && !self.cgroup.populated().unwrap_or(true) {
            self.cgroup.remove();
            return false;
        }
        for pid in &self.pids {
            self.cgroup.signal_member(*pid, signal);
        }
        let killed = tokio::time::timeout(grace, self.cgroup.emptied())
            .await
            .is_err();
        if killed {
            self.cgroup.kill();
            self.cgroup.emptied().await;
        }
        self.cgroup.remove();
        killed
    }
}

/// A failure making a process's cgroup; the process is not started.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `mkdir` failed (permission, `cgroup.max.descendants`, ...).
    #[error("creating cgroup {path}: {error}", path = .0.display(), error = plain(.1))]
    Create(PathBuf, io::Error),
    /// A limit needs a controller the cgroup does not have.
    #[error("{0} needs the cgroup v2 {1} controller")]
    NoController(&'static str, &'static str),
    /// Writing a limit failed.
    #[error("setting {key} in {path}: {error}", key = .0, path = .1.display(), error = plain(.2))]
    Limit(&'static str, PathBuf, io::Error),
}

/// An OS error as the system describes it, without Rust's `(os error N)`,
/// and what EAGAIN means for a cgroup.
fn plain(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) => &text[..at],
        None => &text,
    };
    if e.raw_os_error() == Some(libc::EAGAIN) {
        format!("{text} (a cgroup.max.descendants or cgroup.max.depth above it is reached)")
    } else {
        text.to_string()
    }
}

/// The cgroup of one process. Dropping it does not remove it: that is done
/// once the cgroup is empty ([`Cgroup::remove`]).
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// The subtree's directory, shared by all its cgroups.
    base: Arc<Path>,
    /// Below it: `web/0`. Kept apart from `base` so that a thousand
    /// processes do not each hold a copy of the long common part.
    name: Arc<str>,
}

impl Cgroup {
    /// Its directory.
    pub fn path(&self) -> PathBuf {
        self.base.join(&*self.name)
    }

    /// The interface file `name` of it.
    fn file(&self, name: &str) -> PathBuf {
        let mut path = self.path();
        path.push(name);
        path
    }

    /// Opens the directory, for `CLONE_INTO_CGROUP`.
    pub fn open(&self) -> io::Result<OwnedFd> {
        let fd = nix::fcntl::open(
            &self.path(),
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(fd)
    }

    fn limit(&self, resources: &Resources) -> Result<(), CgroupError> {
        for Limit {
            key,
            controller,
            file,
            value,
        } in limits(resources)
        {
            let path = self.file(file);
            match write_file(&path, &value) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    return Err(CgroupError::NoController(key, controller))
                }
                Err(e) => return Err(CgroupError::Limit(key, path, e)),
            }
        }
        Ok(())
    }

    /// Whether a process is still in it (`populated` of `cgroup.events`).
    pub fn populated(&self) -> io::Result<bool> {
        let text = std::fs::read_to_string(self.file("cgroup.events"))?;
        Ok(populated_in(&text))
    }

    /// SIGKILL to every process in it, at once (`cgroup.kill`).
    pub fn kill(&self) {
        if let Err(e) = write_file(&self.file("cgroup.kill"), "1") {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!("killing cgroup {}: {e}", self.path().display());
            }
        }
    }

    /// How many times the OOM killer killed a process in it
    /// (`oom_kill` of `memory.events`; 0 without the memory controller).
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.file("memory.events"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The processes in it now.
    pub fn pids(&self) -> Vec<Pid> {
        std::fs::read_to_string(self.file("cgroup.procs"))
            .map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .map(Pid::from_raw)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sends `signal` to `pid` if it is in this cgroup: through a pidfd
    /// opened first, so a PID recycled since it was listed is never hit.
    pub fn signal_member(&self, pid: Pid, signal: Signal) {
        let Ok(pidfd) = super::reaper::open_pidfd(pid) else {
            return;
        };
        if self.member(pid) {
            let _ = super::reaper::pidfd_send_signal(&pidfd, signal, 0);
        }
    }

    /// Whether `pid` is in this cgroup, by `/proc/PID/cgroup`.
    fn member(&self, pid: Pid) -> bool {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            return false;
        };
        let Some(relative) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            return false;
        };
        self.path().ends_with(relative.trim_start_matches('/'))
    }

    /// Waits until it is empty. Woken by the kernel's notification on
    /// `cgroup.events`, which it sends at most once per 10 ms per cgroup
    /// (the one for the spawn may hold back the one for the kill), so it
    /// also looks again after 1, 2, 4, ... ms, up to every second: a
    /// delayed or missed notification costs little, never a hang.
    pub async fn emptied(&self) {
        let events = match File::open(self.file("cgroup.events")).and_then(|f| {
            // SAFETY: a File stays open and names the same file until the
            // AsyncFd owning it is dropped or gives it back.
            unsafe { AsyncFd::register_with_interest(f, Interest::PRIORITY) }
                .map_err(|e| io::Error::other(e.to_string()))
        }) {
            Ok(events) => events,
            // Gone: nothing is in it.
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!("watching {}: {e}", self.path().display());
                return;
            }
        };
        let started = tokio::time::Instant::now();
        let mut step = Duration::from_millis(1);
        let mut warned = false;
        loop {
            // Read through the watched file: reading it is what resets the
            // notification (kernfs).
            let mut buf = [0u8; 256];
            match events.get_ref().read_at(&mut buf, 0) {
                Ok(n) if !populated_in(&String::from_utf8_lossy(&buf[..n])) => return,
                Ok(_) => {}
                Err(_) => return,
            }
            match tokio::time::timeout(step, events.ready(Interest::PRIORITY)).await {
                Ok(Ok(mut guard)) => guard.clear_ready(),
                _ => step = (step * 2).min(Duration::from_secs(1)),
            }
            let waited = started.elapsed();
            if waited >= SLOW_EMPTY && !warned {
                warned = true;
                tracing::warn!(
                    "cgroup {} is not empty {} after its kill; waiting on",
                    self.path().display(),
                    crate::text::short_duration(waited)
                );
            }
        }
    }

    /// Removes it (it must be empty). Its program's directory stays for
    /// the next process ([`Tree::remove_program`] when the program goes):
    /// making it again would enable its controllers again at every restart.
    pub fn remove(&self) {
        self.remove_quietly();
    }

    fn remove_quietly(&self) -> bool {
        match std::fs::remove_dir(self.path()) {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => true,
            Err(e) => {
                tracing::warn!("removing cgroup {}: {e}", self.path().display());
                false
            }
        }
    }

    /// After its main process ended: `None` if the cgroup is empty (it is
    /// removed, and `end` stands), else whatever is left is killed and the
    /// returned receiver gives `end` once the cgroup is empty. Descendants
    /// never outlive the process they belong to.
    pub fn after_exit(&self, end: ProcessEnd) -> Option<super::ExitReceiver> {
        match self.populated() {
            Ok(false) | Err(_) => {
                self.remove();
                None
            }
            Ok(true) => {
                self.kill();
                let (tx, rx) = tokio::sync::oneshot::channel();
                let cgroup = self.clone();
                tokio::spawn(async move {
                    cgroup.emptied().await;
                    let _ = tx.send(end);
                });
                Some(rx)
            }
        }
    }
}

/// The error of the first limit in `resources` that needs a cgroup
/// controller: what a process that gets no cgroup fails with.
pub fn needs_controller(resources: &Resources) -> Option<CgroupError> {
    limits(resources)
        .next()
        .map(|limit| CgroupError::NoController(limit.key, limit.controller))
}

/// One limit of SPEC §5.3 as the cgroup takes it.
struct Limit {
    /// The config key.
    key: &'static str,
    /// The controller that provides `file`.
    controller: &'static str,
    /// The interface file.
    file: &'static str,
    /// What is written to it.
    value: String,
}

/// The cgroup limits `resources` sets.
fn limits(resources: &Resources) -> impl Iterator<Item = Limit> {
    let limit = |key, controller, file, value: Option<String>| {
        value.map(|value| Limit {
            key,
            controller,
            file,
            value,
        })
    };
    [
        limit(
            "memory_max",
            "memory",
            "memory.max",
            resources.memory_max.map(|b| b.to_string()),
        ),
        // Per 100 ms: 150% is 150 ms of CPU time in each 100 ms.
        limit(
            "cpu_max",
            "cpu",
            "cpu.max",
            resources
                .cpu_max
                .map(|pct| format!("{} 100000", u64::from(pct) * 1000)),
        ),
        limit(
            "pids_max",
            "pids",
            "pids.max",
            resources.pids_max.map(|n| n.to_string()),
        ),
    ]
    .into_iter()
    .flatten()
}

/// Whether `cgroup.events` text says `populated 1`.
fn populated_in(text: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix("populated ")
            .is_some_and(|v| v.trim() != "0")
    })
}

/// Where the cgroup2 file system is mounted, from /proc/self/mountinfo.
pub fn mount_point() -> io::Result<Option<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_point_in(&text))
}

/// The cgroup2 mount point in mountinfo text (the first, if several).
fn mount_point_in(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mount = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape_octal(mount)))
    })
}

/// mountinfo writes space, tab, newline and backslash as `\040` etc.
fn unescape_octal(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Some(value) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|digits| u8::from_str_radix(digits, 8).ok())
            {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The directory of minder's own cgroup (the `0::` line of /proc/self/cgroup).
fn own_cgroup(mount: &Path) -> io::Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup")?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| io::Error::new(ErrorKind::NotFound, "no cgroup v2 line"))?;
    Ok(mount.join(relative.trim().trim_start_matches('/')))
}

/// `minder-` and the socket path made into one file name: readable, and
/// with a hash of the path so that two paths that read alike differ.
fn subtree_name(socket: &Path) -> String {
    let text = socket.to_string_lossy();
    let readable: String = text
        .trim_start_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') => c,
            _ => '_',
        })
        .take(100)
        .collect();
    // FNV-1a, 32 bits: stable across versions, unlike std's hasher.
    let hash = text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("minder-{readable}-{hash:08x}")
}

fn make_dir(path: &Path) -> io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// Enables, below `dir`, those of [`CONTROLLERS`] that `dir` has. One write
/// each: a controller the parent lacks must not stop the others.
fn enable_controllers(dir: &Path) {
    let Ok(available) = std::fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    let subtree = dir.join("cgroup.subtree_control");
    for controller in CONTROLLERS {
        if available.split_whitespace().any(|c| c == controller) {
            if let Err(e) = write_file(&subtree, &format!("+{controller}")) {
                tracing::debug!("enabling {controller} in {}: {e}", subtree.display());
            }
        }
    }
}

/// One write of `value` to a cgroup interface file.
fn write_file(path: &Path, value: &str) -> io::Result<()> {
    let file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_at(value.as_bytes(), 0).map(|_| ())
}

/// Whether [`super::spawn`] can put a child straight into a cgroup here
/// (`clone3` with `CLONE_INTO_CGROUP`, which needs a small piece of
/// assembly per architecture).
pub const CAN_SPAWN_INTO_CGROUP: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_among_v1_mounts() {
        let text = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/memory rw,nosuid shared:11 - cgroup cgroup rw,memory
";
        assert_eq!(
            mount_point_in(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(mount_point_in("1 2 0:1 / / rw - ext4 /dev/sda rw\n"), None);
        assert_eq!(
            mount_point_in("1 2 0:1 / /a\\040b rw - cgroup2 none rw\n"),
            Some(PathBuf::from("/a b"))
        );
    }

    #[test]
    fn populated_is_read_from_cgroup_events() {
        assert!(populated_in("populated 1\nfrozen 0\n"));
        assert!(!populated_in("populated 0\nfrozen 0\n"));
        assert!(!populated_in(""));
    }

    #[test]
    fn the_subtree_is_named_after_the_socket_and_tells_look_alikes_apart() {
        let a = subtree_name(Path::new("/run/minder/minder.sock"));
        assert!(a.starts_with("minder-run-minder-minder.sock-"), "{a}");
        let b = subtree_name(Path::new("/run/minder-minder.sock"));
        assert_ne!(a, b);
        let long = subtree_name(&PathBuf::from(format!("/{}", "x".repeat(400))));
        assert!(long.len() < 130, "{}", long.len());
        assert!(!subtree_name(Path::new("/a b/\n")).contains(['/', ' ', '\n']));
    }
}
