//! What a supervised process uses (SPEC §5.1): CPU time and resident memory
//! of the process and all its descendants, measured when asked (a `status`
//! request, a `/metrics` scrape). Read-only: it reads cgroup files and
//! `/proc`, never changes anything.
//!
//! - With a cgroup: CPU is the cgroup's `cpu.stat` `usage_usec` (every cgroup
//!   v2 has it, no controller needed; it keeps the time of processes that
//!   already left). Memory is `memory.current` when the memory controller is
//!   enabled there, else the sum of the resident memory of the processes in
//!   the cgroup (`cgroup.procs`; minder delegates no cgroup to a program, so
//!   it has no sub-cgroups of its own making, and walking a cgroup directory
//!   for them would cost more than the rest of the measurement).
//! - Without one: the process tree from the main PID, by the parent links of
//!   one scan of `/proc`. CPU is user+system time of every process of the
//!   tree, plus the time of the children each of them has waited for
//!   (`cutime`, `cstime`): a descendant that exited and was reaped inside the
//!   tree still counts; one whose parent died before it (re-parented out of
//!   the tree) no longer does. Memory is the sum of their resident memory.
//!
//! A process that is gone in the middle of a measurement is skipped, never
//! an error; every walk is bounded.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::OnceLock;

use nix::unistd::Pid;

/// What a process and its descendants use.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Usage {
    /// User + system CPU time, seconds.
    pub cpu_secs: f64,
    /// Resident memory, bytes; `None` when unknown (no live process, nothing
    /// readable).
    pub memory_bytes: Option<u64>,
}

/// At most this many entries of `/proc` are read in one scan (the kernel's
/// largest `pid_max`).
const MAX_PROC_ENTRIES: usize = 1 << 22;
/// At most this many processes are counted in one tree or one cgroup.
const MAX_PROCESSES: usize = 100_000;

/// What one measurement needs of a process: its main PID (`None` without a
/// live process) and its cgroup directory (absolute path), if it has one.
pub type Item<'a> = (Option<Pid>, Option<&'a Path>);

/// Measures one process. For many, use [`measure_all`].
pub fn measure(pid: Option<Pid>, cgroup: Option<&Path>) -> Usage {
    measure_all(&[(pid, cgroup)])[0]
}

/// Measures each item, in order: from its cgroup when it has one (and the
/// cgroup can be read), else from the process tree of its PID. `/proc` is
/// scanned at most once per call, and only when some item needs it. An item
/// with neither (no live process) is `cpu_secs` 0 and `memory_bytes` `None`.
pub fn measure_all(items: &[Item<'_>]) -> Vec<Usage> {
    let mut reader = Reader::default();
    let mut out: Vec<Option<Usage>> = items
        .iter()
        .map(|(pid, cgroup)| match (pid, cgroup) {
            (_, Some(dir)) => reader.cgroup(dir),
            (None, None) => Some(Usage::default()),
            (Some(_), None) => None,
        })
        .collect();
    if out
        .iter()
        .zip(items)
        .any(|(usage, (pid, _))| usage.is_none() && pid.is_some())
    {
        let table = ProcTable::scan();
        for (usage, (pid, _)) in out.iter_mut().zip(items) {
            if usage.is_none() {
                *usage = pid.map(|pid| table.tree(pid));
            }
        }
    }
    out.into_iter().map(Option::unwrap_or_default).collect()
}

/// `sysconf(_SC_CLK_TCK)`: the unit of the times in `/proc/PID/stat`.
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            ticks as f64
        } else {
            100.0
        }
    })
}

/// `sysconf(_SC_PAGESIZE)`: the unit of `rss` in `/proc/PID/stat`.
fn page_size() -> u64 {
    static PAGE: OnceLock<u64> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(size).ok().filter(|s| *s > 0).unwrap_or(4096)
    })
}

/// The fields of `/proc/PID/stat` a measurement needs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    ppid: i32,
    /// utime + stime, clock ticks.
    own_ticks: u64,
    /// cutime + cstime (children waited for), clock ticks.
    reaped_ticks: u64,
    /// Resident pages.
    rss_pages: u64,
}

/// Parses `/proc/PID/stat`. The command name (field 2) is in parentheses and
/// may itself contain spaces and parentheses: the fields are read after the
/// last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // Fields from 3 (state) on: state ppid pgrp session tty_nr tpgid flags
    // minflt cminflt majflt cmajflt utime stime cutime cstime priority nice
    // num_threads itrealvalue starttime vsize rss.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(22).collect();
    let number = |i: usize| -> Option<u64> { fields.get(i)?.parse().ok() };
    // cutime and cstime are signed in the kernel's format ("long").
    let signed = |i: usize| -> Option<u64> {
        let v: i64 = fields.get(i)?.parse().ok()?;
        Some(v.max(0) as u64)
    };
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        own_ticks: number(11)?.saturating_add(number(12)?),
        reaped_ticks: signed(13)?.saturating_add(signed(14)?),
        rss_pages: signed(21)?,
    })
}

fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// One scan of `/proc`: every process's stat, and the children of each.
struct ProcTable {
    stats: HashMap<i32, Stat>,
    children: HashMap<i32, Vec<i32>>,
}

impl ProcTable {
    fn scan() -> ProcTable {
        let mut stats = HashMap::new();
        let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return ProcTable { stats, children };
        };
        for entry in dir.take(MAX_PROC_ENTRIES).flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            // Gone since the directory was listed: skipped.
            if let Some(stat) = read_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
                stats.insert(pid, stat);
            }
        }
        ProcTable { stats, children }
    }

    /// The usage of `main` and its descendants (breadth first, each process
    /// once, at most [`MAX_PROCESSES`]).
    fn tree(&self, main: Pid) -> Usage {
        let main = main.as_raw();
        if !self.stats.contains_key(&main) {
            return Usage::default();
        }
        let mut ticks = 0u64;
        let mut pages = 0u64;
        let mut seen = HashSet::from([main]);
        let mut queue = std::collections::VecDeque::from([main]);
        while let Some(pid) = queue.pop_front() {
            let Some(stat) = self.stats.get(&pid) else {
                continue;
            };
            ticks = ticks
                .saturating_add(stat.own_ticks)
                .saturating_add(stat.reaped_ticks);
            pages = pages.saturating_add(stat.rss_pages);
            for &child in self.children.get(&pid).into_iter().flatten() {
                if seen.len() >= MAX_PROCESSES {
                    break;
                }
                if seen.insert(child) {
                    queue.push_back(child);
                }
            }
        }
        Usage {
            cpu_secs: ticks as f64 / clock_ticks(),
            memory_bytes: Some(pages.saturating_mul(page_size())),
        }
    }
}

/// Reads the cgroup files of one measurement, cheaply: a `status` of a
/// thousand processes reads a few thousand of them.
#[derive(Default)]
struct Reader {
    /// Reused for every file.
    buf: Vec<u8>,
    /// `memory.current` was missing in one cgroup: the memory controller is
    /// not enabled in minder's subtree, so it is missing in all of them.
    no_memory_current: bool,
}

impl Reader {
    /// The usage of the processes of the cgroup `dir`; `None` when its
    /// `cpu.stat` cannot be read (no such cgroup any more).
    fn cgroup(&mut self, dir: &Path) -> Option<Usage> {
        let usec: u64 = self.read(&dir.join("cpu.stat"))?.lines().find_map(|line| {
            let value = line.strip_prefix("usage_usec")?;
            value.trim().parse().ok()
        })?;
        let current = if self.no_memory_current {
            None
        } else {
            let current = self
                .read(&dir.join("memory.current"))
                .and_then(|text| text.trim().parse().ok());
            self.no_memory_current = current.is_none();
            current
        };
        let memory_bytes = current.or_else(|| self.rss(dir));
        Some(Usage {
            cpu_secs: usec as f64 / 1e6,
            memory_bytes,
        })
    }

    /// The resident memory of the processes in `dir`; `None` when its
    /// `cgroup.procs` cannot be read.
    fn rss(&mut self, dir: &Path) -> Option<u64> {
        let pids: Vec<i32> = self
            .read(&dir.join("cgroup.procs"))?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .take(MAX_PROCESSES)
            .collect();
        let mut pages = 0u64;
        for pid in pids {
            let stat = self
                .read(Path::new(&format!("/proc/{pid}/stat")))
                .and_then(parse_stat);
            if let Some(stat) = stat {
                pages = pages.saturating_add(stat.rss_pages);
            }
        }
        Some(pages.saturating_mul(page_size()))
    }

    /// The text of a small kernel file (cgroup, /proc): open, read, close.
    /// std's `read_to_string` first asks for the file's size, one system
    /// call more per file for files that report none.
    fn read(&mut self, path: &Path) -> Option<&str> {
        use std::io::Read;
        let mut file = std::fs::File::open(path).ok()?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    // These files hand over all they have in one read
                    // unless it does not fit; a bound for hostile sizes.
                    if n < chunk.len() || self.buf.len() >= MAX_FILE {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        std::str::from_utf8(&self.buf).ok()
    }
}

/// At most this much of one file is read (a `cgroup.procs` of 100k PIDs).
const MAX_FILE: usize = 1 << 20;

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    /// Generous: the tests run on loaded 2-core machines.
    const WAIT: Duration = Duration::from_secs(60);
    const POLL: Duration = Duration::from_millis(20);

    /// A process a test started, with descendants it knows the PIDs of:
    /// all killed by PID and the process waited for when dropped, so a
    /// failing assertion leaves nothing spinning.
    struct Started {
        child: Child,
        descendants: Vec<i32>,
    }

    impl Started {
        fn pid(&self) -> Pid {
            Pid::from_raw(self.child.id() as i32)
        }
    }

    impl Drop for Started {
        fn drop(&mut self) {
            for &pid in &self.descendants {
                kill(pid);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Measures until `done` holds of the usage, or panics at the deadline.
    fn measure_until(what: &str, item: Item<'_>, done: impl Fn(&Usage) -> bool) -> Usage {
        let start = Instant::now();
        let mut last = Usage::default();
        for _ in 0..(WAIT.as_millis() / POLL.as_millis()) {
            last = measure_all(&[item])[0];
            if done(&last) {
                return last;
            }
            if start.elapsed() >= WAIT {
                break;
            }
            std::thread::sleep(POLL);
        }
        panic!("timed out waiting for {what}: last {last:?}");
    }

    /// Waits until `/proc/PID` is gone (the process was reaped).
    fn wait_reaped(pid: i32) {
        let start = Instant::now();
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(start.elapsed() < WAIT, "process {pid} was not reaped");
            std::thread::sleep(POLL);
        }
    }

    fn kill(pid: i32) {
        // SAFETY: kill(2) on a process this test started; while it is not
        // reaped (or, for a grandchild, its parent is alive and waits for it)
        // the PID cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    /// `sh -c SCRIPT` whose first stdout line is the PID of a descendant.
    fn sh_printing_pid(script: &str) -> Started {
        let child = Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning sh");
        let mut started = Started {
            child,
            descendants: Vec::new(),
        };
        let mut line = String::new();
        BufReader::new(started.child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("reading a PID");
        started
            .descendants
            .push(line.trim().parse().expect("a PID"));
        started
    }

    #[test]
    fn the_command_name_may_hold_spaces_and_parentheses() {
        let text = "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 \
                    25 7 3 1 20 0 1 0 12345 10000000 321 18446744073709551615";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                ppid: 17,
                own_ticks: 32,
                reaped_ticks: 4,
                rss_pages: 321,
            })
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
        assert_eq!(parse_stat("4242 (x) S 1 2"), None);
    }

    #[test]
    fn no_live_process_uses_nothing_known() {
        let usage = measure_all(&[(None, None)]);
        assert_eq!(
            usage,
            vec![Usage {
                cpu_secs: 0.0,
                memory_bytes: None
            }]
        );
    }

    #[test]
    fn a_process_that_is_gone_is_skipped() {
        let mut child = Command::new("true").spawn().expect("spawning true");
        let gone = Pid::from_raw(child.id() as i32);
        child.wait().expect("waiting for true");
        let me = Pid::from_raw(std::process::id() as i32);
        let usage = measure_all(&[(Some(gone), None), (Some(me), None)]);
        assert_eq!(usage[0], Usage::default());
        assert!(usage[1].memory_bytes.is_some_and(|m| m > 0), "{usage:?}");
    }

    #[test]
    fn a_grandchild_burning_cpu_counts_and_still_counts_once_reaped() {
        // sh (the main process) -> a subshell spinning; sh waits for it, then
        // reads stdin, so it lives on with the reaped time in its cutime.
        let mut main = sh_printing_pid("(while :; do :; done) & echo $!; wait; read _ignored");
        let spinner = main.descendants[0];
        let item = (Some(main.pid()), None);
        let live = measure_until("0.2s of CPU in the tree", item, |u| u.cpu_secs >= 0.2);
        assert!(live.memory_bytes.is_some_and(|m| m > 0), "{live:?}");
        // The spinner alone has (nearly) all of it: the main process is idle.
        let alone = measure(Some(Pid::from_raw(spinner)), None);
        assert!(alone.cpu_secs >= 0.2 * 0.9, "{alone:?} vs {live:?}");
        kill(spinner);
        wait_reaped(spinner);
        main.descendants.clear();
        // Its time moved to its parent's cutime/cstime (tick rounding aside).
        let reaped = measure_all(&[item])[0];
        assert!(
            reaped.cpu_secs >= live.cpu_secs * 0.9,
            "{reaped:?} after {live:?}"
        );
        drop(main.child.stdin.take());
        let _ = main.child.wait();
    }

    /// A cgroup a test made, removed when dropped (once its processes are
    /// reaped: drop it after them).
    struct TestCgroup(PathBuf);

    impl Drop for TestCgroup {
        fn drop(&mut self) {
            // The kernel may still count a process that was just reaped:
            // EBUSY for a moment.
            let start = Instant::now();
            while std::fs::remove_dir(&self.0).is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY))
                && start.elapsed() < WAIT
            {
                std::thread::sleep(POLL);
            }
        }
    }

    /// The cgroup v2 mount point, from /proc/self/mountinfo.
    fn cgroup2_mount() -> Option<PathBuf> {
        let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        text.lines().find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            (after.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
    }

    #[test]
    fn a_cgroup_is_measured_from_its_files() {
        let Some(mount) = cgroup2_mount() else {
            eprintln!("no cgroup2 mount: the cgroup path was not exercised");
            return;
        };
        let dir = mount.join(format!("minder-usage-test-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&dir) {
            eprintln!(
                "cannot create {} ({e}): the cgroup path was not exercised",
                dir.display()
            );
            return;
        }
        let cgroup = TestCgroup(dir.clone());
        let spinner = Started {
            child: Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .spawn()
                .expect("spawning sh"),
            descendants: Vec::new(),
        };
        let pid = spinner.pid();
        if let Err(e) = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .and_then(|mut f| f.write_all(pid.to_string().as_bytes()))
        {
            eprintln!(
                "cannot move a process into {} ({e}): the cgroup path was not exercised",
                dir.display()
            );
            return;
        }
        let item = (Some(pid), Some(dir.as_path()));
        let measured = measure_until("0.2s of CPU in the cgroup", item, |u| u.cpu_secs >= 0.2);
        // From the files alone: no PID given.
        let without_pid = measure(None, Some(&dir));
        eprintln!(
            "cgroup path exercised in {} (memory from {}): {measured:?}",
            dir.display(),
            if dir.join("memory.current").exists() {
                "memory.current"
            } else {
                "the RSS of cgroup.procs"
            }
        );
        drop(spinner);
        // Empty once the spinner is reaped; a cgroup that is gone is measured
        // from the PID, which is gone too.
        drop(cgroup);
        assert!(!dir.exists(), "the test cgroup is still there");
        let after = measure(Some(pid), Some(&dir));
        assert!(measured.memory_bytes.is_some_and(|m| m > 0), "{measured:?}");
        assert!(without_pid.cpu_secs >= measured.cpu_secs, "{without_pid:?}");
        assert!(without_pid.memory_bytes.is_some(), "{without_pid:?}");
        assert_eq!(after, Usage::default());
    }
}
